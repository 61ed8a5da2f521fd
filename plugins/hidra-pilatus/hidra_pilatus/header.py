"""The header of a PILATUS image (miniCBF or TIFF) as JSON-able metadata, read with fabio from a bounded head.

Only the first ``limit`` bytes of a file are ever read, and fabio reads them from memory through ``_Head``, which
turns every way a hostile or truncated file could make a reader spin (a CBF whose binary section never starts, a
TIFF whose directories point back at themselves) into a ``HeaderError``. The ``# Key value unit`` lines of the
Pilatus header (``_array_data.header_contents`` of a CBF, the ImageDescription tag of a TIFF) are parsed by
fabio's ``PilatusHeader``; keys carry their unit (``exposure_time_s``), see ``FIELDS``.
"""
from __future__ import annotations

import io
import math
import os
import stat
import struct
from typing import Any

from fabio.cbfimage import DATA_TYPES, CbfImage, PilatusHeader
from fabio.TiffIO import TiffIO

__all__ = ["FIELDS", "HeaderError", "read_head", "read_metadata"]

#: fabio's Pilatus keyword -> metadata key(s); a keyword with two values and two keys is split, one key joins them
FIELDS: dict[str, tuple[str, ...]] = {
    "Detector": ("detector",),
    "sensor": ("sensor_material", "sensor_thickness_m"),
    "Pixel_size": ("pixel_size_x_m", "pixel_size_y_m"),
    "Exposure_time": ("exposure_time_s",),
    "Exposure_period": ("exposure_period_s",),
    "Tau": ("tau_s",),
    "Count_cutoff": ("count_cutoff_counts",),
    "Threshold_setting": ("threshold_setting_eV",),
    "Gain_setting": ("gain_setting",),
    "N_excluded_pixels": ("n_excluded_pixels",),
    "Excluded_pixels": ("excluded_pixels",),
    "Flat_field": ("flat_field",),
    "Trim_file": ("trim_file",),
    "Image_path": ("image_path",),
    "Wavelength": ("wavelength_angstrom",),
    "Energy_range": ("energy_range_low_eV", "energy_range_high_eV"),
    "Detector_distance": ("detector_distance_m",),
    "Detector_Voffset": ("detector_voffset_m",),
    "Beam_xy": ("beam_x_px", "beam_y_px"),
    "Flux": ("flux",),
    "Filter_transmission": ("filter_transmission",),
    "Start_angle": ("start_angle_deg",),
    "Angle_increment": ("angle_increment_deg",),
    "Detector_2theta": ("detector_2theta_deg",),
    "Polarization": ("polarization",),
    "Alpha": ("alpha_deg",),
    "Kappa": ("kappa_deg",),
    "Phi": ("phi_deg",),
    "Phi_increment": ("phi_increment_deg",),
    "Chi": ("chi_deg",),
    "Chi_increment": ("chi_increment_deg",),
    "Omega": ("omega_deg",),
    "Omega_increment": ("omega_increment_deg",),
    "Oscillation_axis": ("oscillation_axis",),
    "N_oscillations": ("n_oscillations",),
    "Start_position": ("start_position",),
    "Position_increment": ("position_increment",),
    "Shutter_time": ("shutter_time_s",),
}

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*")
_CBF_MAGIC = b"###CBF"
_CONVENTION = b"PILATUS_1.2"
#: reads fabio may make of one head: far more than any real header needs (a CBF takes ~20, a TIFF ~50)
_MAX_READS = 2000
_TIFF_DTYPES = {1: "uint", 2: "int", 3: "float"}  # TIFF SampleFormat -> numpy kind


class HeaderError(Exception):
    """The header could not be read; the message names the problem."""


class _Head(io.BytesIO):
    """The first bytes of a file, for fabio: reading on at their end, or reading over and over, raises."""

    def __init__(self, head: bytes, limit: int) -> None:
        super().__init__(head)
        self.name = "head"  # NOTE: fabio names the stream in its messages; without one it warns
        self._short = _short(head, limit)
        self._reads = 0
        self._at_end = 0

    def read(self, size: int | None = -1) -> bytes:
        self._reads += 1
        if self._reads > _MAX_READS:
            raise HeaderError(f"the header makes a reader go round in circles (over {_MAX_READS} reads)")
        data = super().read(size)
        if not data and size != 0:
            self._at_end += 1
            if self._at_end > 2:  # NOTE: fabio's CBF reader asks for the binary section again and again at EOF
                raise HeaderError(f"the header does not end: {self._short}")
        return data


def read_head(path: str, limit: int) -> bytes:
    """Up to ``limit`` bytes from the start of the regular file ``path``; never blocks on a FIFO or device."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise HeaderError(f"cannot open: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise HeaderError("not a regular file")
        parts: list[bytes] = []
        left = limit
        while left > 0:
            part = os.read(fd, left)
            if not part:
                break
            parts.append(part)
            left -= len(part)
        return b"".join(parts)
    except OSError as exc:
        raise HeaderError(f"cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)


def read_metadata(head: bytes, limit: int, text_limit: int) -> dict[str, Any]:
    """The metadata of an image whose first bytes are ``head``; ``HeaderError`` (or fabio's error) if unreadable."""
    if not head:
        raise HeaderError("empty file")
    parsed: PilatusHeader | None = None
    if head[:4] in _TIFF_MAGIC:
        meta, text = _tiff(head, limit)
    elif head.startswith(_CBF_MAGIC):
        meta, text, parsed = _cbf(head, limit)
    else:
        raise HeaderError(f"neither CBF nor TIFF: it starts with {head[:16]!r}")
    meta.update(_fields_of(parsed) if parsed is not None else _pilatus_fields(text))
    if text_limit:
        meta["header"] = _printable(text[:text_limit])
        if len(text) > text_limit:
            meta["header_truncated"] = True
    return meta


def _cbf(head: bytes, limit: int) -> tuple[dict[str, Any], str, PilatusHeader | None]:
    """Metadata, header text, and the Pilatus header when fabio parsed it already (convention PILATUS_1.2)."""
    if CbfImage.BINARAY_SECTION not in head:
        raise HeaderError(f"no binary section: {_short(head, limit)}")
    image = CbfImage()
    try:
        image.readheader(_Head(head, limit))
    except (IndexError, ValueError, TypeError):
        if not isinstance(image.header.get("_array_data.header_contents"), str):
            raise
        # NOTE: fabio parses a PILATUS_1.2 header inside readheader and fails it whole on one odd line; read again
        # with the convention hidden (same length, so nothing moves): _pilatus_fields parses the text line by line
        image = CbfImage()
        image.readheader(_Head(head.replace(_CONVENTION, _CONVENTION[:-1] + b"x", 1), limit))
    text = image.header.get("_array_data.header_contents", "")
    if not isinstance(text, str):
        raise HeaderError("the Pilatus header (_array_data.header_contents) is not ASCII text")
    meta: dict[str, Any] = {"format": "cbf", "shape": [int(n) for n in image.shape]}
    dtype = DATA_TYPES.get(str(image.header.get("X-Binary-Element-Type", "")))
    if dtype:
        meta["dtype"] = dtype
    return meta, text, image.pilatus_headers


def _tiff(head: bytes, limit: int) -> tuple[dict[str, Any], str]:
    try:
        info = TiffIO(_Head(head, limit)).getInfo(0)
    except struct.error as exc:  # NOTE: fabio unpacks what it reads without checking that it got enough
        raise HeaderError(f"the TIFF header is incomplete ({exc}): {_short(head, limit)}") from None
    text = info.get("imageDescription") or ""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    meta: dict[str, Any] = {"format": "tiff", "shape": [int(info["nRows"]), int(info["nColumns"])]}
    kind = _TIFF_DTYPES.get(int(info.get("sampleFormat") or 1))
    if kind and isinstance(info.get("nBits"), int):
        meta["dtype"] = f"{kind}{info['nBits']}"
    return meta, str(text).rstrip("\x00")


def _short(head: bytes, limit: int) -> str:
    """Why a header can be cut short: the file ended, or the header is longer than the bytes read."""
    if len(head) < limit:
        return f"the file ends after {len(head)} bytes (truncated)"
    return f"not within the first {limit} bytes (max_header_bytes)"


def _pilatus_fields(text: str) -> dict[str, Any]:
    """The ``# Key value unit`` lines as metadata; a line fabio cannot take loses only itself."""
    try:
        return _fields_of(PilatusHeader(text))
    except Exception:  # NOTE: fabio's parser fails a whole header on one odd line (IndexError, ValueError)
        out: dict[str, Any] = {}
        for line in text.splitlines():
            try:
                out.update(_fields_of(PilatusHeader(line)))
            except Exception:
                continue
        return out


def _fields_of(header: PilatusHeader) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for keyword in PilatusHeader.KEYWORDS:
        if keyword not in header:
            continue
        value = header[keyword]
        keys = FIELDS.get(keyword, (keyword.strip(" ('").lower(),))
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if len(keys) == len(values):
            out.update(zip(keys, (_json(v) for v in values)))
        else:
            out[keys[0]] = " ".join(str(v) for v in values)
    return out


def _json(value: Any) -> Any:
    """A header value as JSON takes it: NaN and infinities (which JSON cannot carry) become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return _printable(value) if isinstance(value, str) else value


def _printable(text: str) -> str:
    """Text that encodes as UTF-8 (no lone surrogates), so the metadata always goes on the wire."""
    return text.encode("utf-8", "replace").decode("utf-8")
