"""Writing requests (databuffer.md §4): channel lists, backends by suffix, the camera split.

A request is ``{"data_api_request": <JSON string>, "parameters": <JSON string>, "timestamp": <float>}``; the two
inner fields stay JSON strings (the audit line is double-encoded, §5).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from hidra_core import ConfigError

from hidra_databuffer.broker.config import BrokerConfig

__all__ = ["CAMERA_SUFFIX", "MAX_CAMERAS", "MAX_CHANNELS", "build_requests", "check_channels", "images_output_file",
           "load_channels"]

CAMERA_SUFFIX = ":FPICTURE"
MAX_CHANNELS = 100
MAX_CAMERAS = 2
EVENT_FIELDS = ["channel", "pulseId", "value", "shape", "globalDate"]
CONFIG_FIELDS = ["type", "shape"]
DEV_NULL = "/dev/null"


def check_channels(names: Iterable[Any], what: str) -> list[str]:
    """The names as a list if they are strings within DBW's limits, else ValueError naming ``what`` (F1)."""
    names = list(names)
    bad = [name for name in names if not isinstance(name, str) or not name.strip()]
    if bad:
        raise ValueError(f"{what}: channel names must be non-empty strings, got {bad[:3]!r}")
    if len(names) > MAX_CHANNELS:
        raise ValueError(f"{what}: {len(names)} channels, at most {MAX_CHANNELS} are allowed")
    cameras = [name for name in names if name.endswith(CAMERA_SUFFIX)]
    if len(cameras) > MAX_CAMERAS:
        raise ValueError(f"{what}: {len(cameras)} channels end in {CAMERA_SUFFIX!r} ({', '.join(cameras)}), "
                         f"at most {MAX_CAMERAS} are allowed")
    return names


def load_channels(path: Path | None) -> list[str]:
    """The channels file: one name a line, blank and ``#`` lines skipped; over a limit -> ConfigError (F1)."""
    if path is None:
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"channels file {path}", [str(exc)]) from None
    names = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    try:
        return check_channels(names, f"channels file {path}")
    except ValueError as exc:
        raise ConfigError(f"channels file {path}", [str(exc)]) from None


def images_output_file(output_file: str) -> str:
    """``x.h5`` -> ``x.IMAGES.h5``; ``/dev/null`` is kept; any other name gets the suffix appended (F4)."""
    if output_file == DEV_NULL:
        return output_file
    stem = output_file[:-3] if output_file.endswith(".h5") else output_file
    return stem + ".IMAGES.h5"


def _data_api_request(names: list[str], start: int, stop: int, config: BrokerConfig) -> str:
    channels = [{"name": name, "backend": config.image_backend if name.endswith(CAMERA_SUFFIX)
                 else config.data_backend} for name in names]
    return json.dumps({"channels": channels, "range": {"startPulseId": start, "endPulseId": stop},
                       "response": {"format": "json", "compression": "none"},
                       "eventFields": EVENT_FIELDS, "configFields": CONFIG_FIELDS})


def build_requests(parameters: dict[str, Any], start: int, stop: int, file_channels: list[str],
                   config: BrokerConfig, now: float) -> list[dict[str, Any]]:
    """One request, or two with the camera split: the first always (even with no channels), the second with every
    ``:FPICTURE`` channel and the output file renamed to ``.IMAGES.h5``."""
    override = parameters.get("channels")
    names = file_channels if override is None else check_channels(override, "parameters 'channels'")
    cameras = [name for name in names if name.endswith(CAMERA_SUFFIX)] if config.camera_split else []
    plain = [name for name in names if name not in cameras]
    requests = [{"data_api_request": _data_api_request(plain, start, stop, config),
                 "parameters": json.dumps(parameters), "timestamp": now}]
    if cameras:
        images = {**parameters, "output_file": images_output_file(parameters["output_file"])}
        requests.append({"data_api_request": _data_api_request(cameras, start, stop, config),
                         "parameters": json.dumps(images), "timestamp": now})
    return requests
