"""The simulated DCU: SIMPLON parameter trees per module, the arm/trigger/disarm state machine, the stream."""
from __future__ import annotations

import base64
import binascii
import logging
import random
import threading
from concurrent.futures import Future
from typing import Any

from hidra_eiger.sim.faults import Faults, simulator_knobs
from hidra_eiger.sim.filewriter import FileStore, random_bytes
from hidra_eiger.sim.frames import FrameGenerator
from hidra_eiger.sim.params import Param, ParamError, ParamTree
from hidra_eiger.sim.series import Series
from hidra_eiger.sim.streamer import Streamer
from hidra_eiger.sim.writer import SeriesWriter, filewriter_trees

log = logging.getLogger(__name__)

__all__ = ["API_VERSIONS", "Detector"]

API_VERSIONS = ("1.6.0", "1.8.0")
_HC_KEV_A = 12.398419843  # h·c in keV·Å: wavelength from photon energy


def _detector_config(size: tuple[int, int], v18: bool) -> ParamTree:
    x, y = size
    p = {
        "nimages": Param(1, "uint", min=1, max=2**31 - 1), "ntrigger": Param(1, "uint", min=1, max=2**31 - 1),
        "count_time": Param(0.0099, "float", min=1e-6, max=3600, unit="s"),
        "frame_time": Param(0.01, "float", min=1e-6, max=3600, unit="s"),
        "trigger_mode": Param("ints", "string", allowed_values=["ints", "inte", "exts", "exte"]),
        # NOTE: "none" is a simulator extension (V1 encoding "<"); a real DCU offers lz4 and bslz4 only
        "compression": Param("bslz4", "string", allowed_values=["lz4", "bslz4", "none"]),
        "photon_energy": Param(8041.0, "float", min=1000, max=100_000, unit="eV"),
        "threshold_energy": Param(4020.5, "float", min=500, max=100_000, unit="eV"),
        "wavelength": Param(_HC_KEV_A / 8.041, "float", unit="Å"),
        "x_pixels_in_detector": Param(x, "uint", "r"), "y_pixels_in_detector": Param(y, "uint", "r"),
        "x_pixel_size": Param(75e-6, "float", "r", unit="m"), "y_pixel_size": Param(75e-6, "float", "r", unit="m"),
        "bit_depth_image": Param(16, "uint", allowed_values=[16, 32]),
        "beam_center_x": Param(x * 0.53, "float", unit="pixel"),
        "beam_center_y": Param(y * 0.47, "float", unit="pixel"),
        "detector_distance": Param(0.12, "float", unit="m"),
        "countrate_correction_applied": Param(True, "bool"), "flatfield_correction_applied": Param(True, "bool"),
        "pixel_mask_applied": Param(True, "bool"),
        "sensor_material": Param("Si", "string", "r"), "sensor_thickness": Param(450e-6, "float", "r", unit="m"),
        "description": Param("Dectris EIGER2 Si 1M (simulated)" if v18 else "Dectris EIGER 1M (simulated)",
                             "string", "r"),
        "detector_number": Param("E-SIM-0001", "string", "r"),
        "software_version": Param("hidra-eiger-sim 0.1.0", "string", "r"),
    }
    if v18:
        p["threshold/2/mode"] = Param("disabled", "string", allowed_values=["enabled", "disabled"])
    return ParamTree("detector config", p)


def _trees(size: tuple[int, int], version: str) -> dict[tuple[str, str], ParamTree]:
    v18 = version == "1.8.0"
    stream = {
        "mode": Param("disabled", "string", allowed_values=["enabled", "disabled"]),
        "header_detail": Param("basic", "string", allowed_values=["all", "basic", "none"]),
        "header_appendix": Param("", "string"), "image_appendix": Param("", "string"),
    }
    if v18:  # NOTE: stream format (and so Stream V2) exists from API 1.8 on; 1.6 clients get a 404
        stream["format"] = Param("legacy", "string", allowed_values=["legacy", "cbor"])
    return {
        ("detector", "config"): _detector_config(size, v18),
        ("detector", "status"): ParamTree("detector status", {
            "state": Param("idle", "string", "r"), "error": Param([], "list", "r"),
            "builder/dcu_buffer_free": Param(100.0, "float", "r", unit="%")}),
        ("stream", "config"): ParamTree("stream config", stream),
        ("stream", "status"): ParamTree("stream status", {
            "state": Param("disabled", "string", "r"), "error": Param([], "list", "r"),
            "dropped": Param(0, "uint", "r")}),
        ("simulator", "config"): ParamTree("simulator config", {
            "bitshuffle_header": Param(False, "bool"), "seed": Param(0, "uint"),
            "distinct_frames": Param(16, "uint", min=1, max=4096),
            # NOTE: mean photons per pixel relative to a bright ~0.1 s exposure; at kHz frame rates real frames
            # hold ~100x fewer (mostly zeros), which is what decides their compressed size
            "flux": Param(1.0, "float", min=0.0, max=100.0), **simulator_knobs()}),
        **filewriter_trees(v18),
    }


_DEAD_TIME_S = 1e-7  # readout dead time between count_time and frame_time


class Detector:
    """The DCU's state and behaviour, independent of HTTP (the REST app only translates)."""

    def __init__(self, streamer: Streamer, version: str = "1.8.0", size: tuple[int, int] = (1030, 1065)) -> None:
        if version not in API_VERSIONS:
            raise ValueError(f"api version must be one of {API_VERSIONS}, got {version!r}")
        self.version = version
        self.streamer = streamer
        self.trees = _trees(size, version)
        self._lock = threading.Lock()
        self._series: Series | None = None
        self._series_id = 0
        self._triggers_done = 0
        self._unique = random.getrandbits(63)  # NOTE: new per process, like series_unique_id after a DCU restart
        self.files = FileStore(self.knobs)
        self.faults = Faults(self.knobs)
        self.writer = SeriesWriter(self.files, self.trees[("filewriter", "config")], self.knobs)
        self._stop = threading.Event()  # NOTE: set by abort, cancel and reboot: stops a writer, also a stalled one

    def knobs(self) -> dict[str, Any]:
        """The simulator's test-control values (``simulator/config``), read when they matter."""
        return self.trees[("simulator", "config")].values()

    def tree(self, module: str, task: str) -> ParamTree:
        if (module, task) == ("simulator", "status"):
            return ParamTree("simulator status", {"created": Param(self.files.created(), "list", "r"),
                                                  "requests": Param(self.faults.snapshot(), "dict", "r")})
        try:
            tree = self.trees[(module, task)]
        except KeyError:
            raise ParamError(404, f"no {module} {task} in SIMPLON {self.version}") from None
        if (module, task) == ("detector", "status"):
            tree.set("builder/dcu_buffer_free", self.files.buffer_free())
        elif (module, task) == ("filewriter", "status"):
            tree.set("state", "ready" if self.trees[("filewriter", "config")]["mode"] == "enabled" else "disabled")
            if self.version != "1.6.0":  # NOTE: status/files exists on newer firmware only
                tree.params["files"] = Param(self.files.listing() or None, "list", "r")
        return tree

    def put(self, module: str, task: str, name: str, value: Any) -> list[str]:
        if task != "config":
            raise ParamError(405, f"{module} {task} is read-only; PUT goes to {module}/api/{self.version}/config")
        tree = self.tree(module, task)
        with self._lock:
            before = tree.values()
            changed = tree.put(name, value)
            self._side_effects(module, name)
            changed += [k for k, v in tree.values().items() if k != name and v != before[k]]
        return changed

    def put_many(self, module: str, task: str, body: dict[str, Any]) -> list[str]:
        """Bulk PUT ``{name: {"value": x}, ...}``: every name and type is checked before anything changes."""
        tree = self.tree(module, task)
        for name, obj in body.items():
            if not isinstance(obj, dict) or "value" not in obj:
                raise ParamError(400, f"{name}: expected {{\"value\": ...}}, got {obj!r}")
            tree.get(name).check(name, obj["value"])
        changed: list[str] = []
        for name, obj in body.items():
            changed += [n for n in self.put(module, task, name, obj["value"]) if n not in changed]
        return changed

    def _side_effects(self, module: str, name: str) -> None:
        cfg = self.trees[("detector", "config")]
        if module == "detector" and name == "photon_energy":
            cfg.set("threshold_energy", cfg["photon_energy"] / 2)
            cfg.set("wavelength", _HC_KEV_A / (cfg["photon_energy"] / 1000))
        elif module == "detector" and name == "count_time" and cfg["frame_time"] < cfg["count_time"] + _DEAD_TIME_S:
            cfg.set("frame_time", cfg["count_time"] + _DEAD_TIME_S)
        elif module == "detector" and name == "frame_time" and cfg["count_time"] > cfg["frame_time"] - _DEAD_TIME_S:
            cfg.set("count_time", max(cfg["frame_time"] - _DEAD_TIME_S, 1e-6))
        elif module == "stream" and name == "mode":
            enabled = self.trees[("stream", "config")]["mode"] == "enabled"
            self.trees[("stream", "status")].set("state", "ready" if enabled else "disabled")

    def command(self, module: str, name: str, body: Any = None) -> Any:
        if module in ("stream", "filewriter") and name == "initialize" or (module, name) == ("detector",
                                                                                         "status_update"):
            return None
        if (module, name) == ("filewriter", "clear"):
            self.files.wipe(reboot=False)
            return None
        if module == "simulator":
            return self._simulator_command(name, body)
        if module != "detector":
            raise ParamError(404, f"no command {name!r} in {module}")
        handlers = {"initialize": self._initialize, "arm": self._arm, "trigger": self._trigger,
                    "disarm": self._disarm, "cancel": self._cancel, "abort": self._abort}
        if name not in handlers:
            raise ParamError(404, f"unknown detector command {name!r}; known: {sorted(handlers)}")
        return handlers[name]()

    def _simulator_command(self, name: str, body: Any) -> Any:
        if name == "reboot":
            self._abort()
            gone = self.files.wipe(reboot=True)
            if self.knobs()["reboot_resets_series"]:
                self._series_id = 0
            log.warning("simulated reboot: %d files wiped", gone)
            return None
        if name != "put_file":
            raise ParamError(404, f"unknown simulator command {name!r}; known: ['put_file', 'reboot']")
        spec = body.get("value") if isinstance(body, dict) else None
        path = spec.get("path") if isinstance(spec, dict) else None
        if not isinstance(path, str) or not path or "\0" in path:
            raise ParamError(400, f'put_file expects {{"value": {{"path": "a/b.h5", "size": N}}}}, got {body!r}')
        if isinstance(spec.get("content_b64"), str):  # type: ignore[union-attr]
            try:
                content = base64.b64decode(spec["content_b64"], validate=True)  # type: ignore[index]
            except binascii.Error as exc:
                raise ParamError(400, f"put_file content_b64 is not base64: {exc}") from None
        elif isinstance(spec.get("size"), int) and spec["size"] >= 0:  # type: ignore[union-attr,index]
            content = random_bytes(spec["size"])  # type: ignore[index]
        else:
            raise ParamError(400, f"put_file needs a size (uint) or content_b64, got {spec!r}")
        return self.files.add(path, content).record.value()

    def _state(self, state: str) -> None:
        self.trees[("detector", "status")].set("state", state)

    def _initialize(self) -> None:
        self._abort()

    def _arm(self) -> dict[str, int]:
        with self._lock:
            state = self.trees[("detector", "status")]["state"]
            if state != "idle":
                raise ParamError(409, f"arm needs an idle detector, state is {state!r}; disarm or abort first")
            self._series_id += 1
            self._series = self._new_series()
            self._triggers_done = 0
            self._stop = threading.Event()
            self.writer.arm(self._series)
            self._state("ready")
            self._stream("header")
            log.info("armed series %d (%s)", self._series_id, self._series.stream_format)
            return {"sequence id": self._series_id}

    def _new_series(self) -> Series:
        cfg = self.trees[("detector", "config")].values()
        stream = self.trees[("stream", "config")].values()
        sim = self.trees[("simulator", "config")].values()
        fmt = stream.get("format", "legacy")
        two = fmt == "cbor" and cfg.get("threshold/2/mode") == "enabled"
        generator = FrameGenerator((cfg["y_pixels_in_detector"], cfg["x_pixels_in_detector"]),
                                   f"uint{cfg['bit_depth_image']}", sim["seed"], sim["distinct_frames"],
                                   sim["flux"])
        return Series(self._series_id, self._unique, fmt, stream["header_detail"], cfg, stream["header_appendix"],
                      stream["image_appendix"], sim["bitshuffle_header"],
                      ["threshold_1", "threshold_2"] if two else ["threshold_1"], generator)

    def _stream(self, kind: str, first: int = 0, count: int = 0) -> Future[int] | None:
        if self._series is None or self.trees[("stream", "config")]["mode"] != "enabled":
            return None
        return self.streamer.submit(kind, self._series, first, count)

    def _trigger(self) -> None:
        with self._lock:
            state = self.trees[("detector", "status")]["state"]
            if state != "ready" or self._series is None:
                raise ParamError(409, f"trigger needs an armed detector, state is {state!r}; arm first")
            nimages = int(self._series.detector["nimages"])
            first = self._triggers_done * nimages
            done = self._stream("images", first, nimages)
            self._triggers_done += 1
            self._state("acquire")
            stop, frame_time = self._stop, float(self._series.detector["frame_time"])
        # NOTE: the files are written in this thread while the stream worker sends; a full buffer stalls it here
        written = self.writer.write(first, nimages, frame_time, stop)
        # NOTE: like the DCU, trigger returns when its exposures are over; fewer sent = aborted or cancelled, and
        # the abort/cancel command ends the series its own way
        if done is not None and done.result() < nimages or written < nimages:
            return
        with self._lock:
            if self._series is not None and self._triggers_done >= int(self._series.detector["ntrigger"]):
                self._finish("end")
            elif self._series is not None:
                self._state("ready")

    def _finish(self, end: str | None) -> None:
        if end is not None:
            self._stream(end)
        self.writer.end()
        self._series = None
        self._state("idle")

    def _disarm(self) -> None:
        with self._lock:
            if self._series is not None:
                self._finish("end")

    def _cancel(self) -> None:
        self._stop.set()
        self.streamer.abort()
        self._disarm()

    def _abort(self) -> None:
        # NOTE: abort drops the rest of the series and sends no end message: the "aborted series" case of tests
        self._stop.set()
        self.streamer.abort()
        with self._lock:
            self._finish(None)
