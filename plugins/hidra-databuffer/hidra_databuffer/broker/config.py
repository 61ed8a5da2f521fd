"""The broker's configuration: one frozen pydantic model, unknown keys refused (databuffer.md §2)."""
from __future__ import annotations

from pathlib import Path

import logging

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hidra_databuffer.api import BrokerRestConfig

__all__ = ["DBW_AUDIT_FILE", "BrokerConfig"]

#: DBW's audit trail; the broker checks at start-up that it can append to it
DBW_AUDIT_FILE = Path("/var/log/sf_databuffer_audit.log")


class BrokerConfig(BaseModel):
    """Options of ``hidra-databuffer-broker``; the CLI flags keep DBW's names."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    channels_file: Path | None = Field(None, description="channel names, one a line ('#' and blank lines "
                                       "skipped); at most 100, at most 2 ending in ':FPICTURE'; read once at start")
    output_host: str = Field("127.0.0.1", description="interface the request PUSH socket binds ('*' = all)")
    output_port: int = Field(12500, ge=0, le=65535, description="request PUSH port the writers connect to; 0 = free")
    queue_length: int = Field(100, ge=1, description="ZeroMQ send high-water mark of the request socket")
    rest_host: str = Field("127.0.0.1", description="interface of the REST API (DBW hard-coded a site host)")
    rest_port: int = Field(8888, ge=0, le=65535, description="REST port; 0 = a free one")
    log_level: str = Field("INFO", description="logging level name (DEBUG, INFO, WARNING, ERROR, CRITICAL)")
    audit_trail_only: bool = Field(False, description="write the audit line and never send (replay later)")
    audit_file: Path = Field(DBW_AUDIT_FILE, description="append-only audit trail, one line per writing request")
    send_timeout_ms: int = Field(1000, ge=1, description="a request no writer takes within this is an error reply")
    epics_writer_url: str | None = Field(None, description="optional EPICS writer side-channel (off by default)")
    data_backend: str = Field("sf-databuffer", description="backend of ordinary channels in the data-API request")
    image_backend: str = Field("sf-imagebuffer", description="backend of channels ending in ':FPICTURE'")
    camera_split: bool = Field(True, description="send camera channels in a second request to <name>.IMAGES.h5")
    rest: BrokerRestConfig = Field(default_factory=BrokerRestConfig, description="hidra's REST API and Prometheus"
                                   " /metrics of this broker, on a port of its own beside DBW's (rest_port)")

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if not isinstance(logging.getLevelName(value.upper()), int):
            raise ValueError(f"unknown log level {value!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return value.upper()
