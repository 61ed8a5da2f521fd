"""The HDF5 writer's configuration: one frozen pydantic model, unknown keys refused (databuffer.md §6)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hidra_databuffer.api import WriterRestConfig
from hidra_databuffer.dbwriter.query import DEFAULT_DATA_API_URL

__all__ = ["WriterConfig"]


class WriterConfig(BaseModel):
    """Options of ``hidra-databuffer-writer``; keys are DBW's argument names."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    connect_address: str = Field(description="broker PUSH address to connect to, e.g. tcp://127.0.0.1:12500")
    user_id: int = Field(ge=-1, description="uid (and gid) to run as; -1 keeps the current privileges")
    data_retrieval_delay: float = Field(
        0.0, ge=0, description="seconds after the request's creation before the data API is queried")
    data_api_url: str = Field(DEFAULT_DATA_API_URL, description="full query URL of the data API")
    retries: int = Field(0, ge=0, description="further attempts after a failed write")
    retry_backoff: float = Field(1.0, ge=0, description="seconds between attempts")
    query_max_pulses: int = Field(
        10_000, ge=1, description="at most this many pulses per query: a longer range is fetched as consecutive"
        " sub-ranges written one after another into the file, so the writer's memory holds about one of them")
    query_max_bytes: int = Field(
        64 << 20, ge=1, description="bytes of answer a sub-query aims at, sized from the bytes per pulse of the"
        " answers so far (the first asks for 100 pulses); a 413 from the data API halves the sub-range")
    query_binary: bool = Field(
        True, description="ask the data API for the binary range answer (HTTP Accept"
        " application/x-hidra-databuffer): raw array bytes instead of JSON number lists; a data API without it"
        " answers JSON, which is taken as before")
    queue_size: int = Field(1, ge=1, description="requests held by this writer's receive queue (ZeroMQ RCVHWM)")
    status_endpoint: str | None = Field(
        None, description="publish one JSON write result per request (topic databuffer.write) on a PUB socket that"
        " connects here, where a monitor's SUB binds; every writer may use the same one (default: off)")
    rest: WriterRestConfig = Field(default_factory=WriterRestConfig, description="hidra's REST API and Prometheus"
                                   " /metrics of this writer")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="logging level (DEBUG, INFO, WARNING or ERROR)")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value
