"""Real HDF5 master and data files as a DCU's FileWriter writes them, built in memory with h5py + hdf5plugin.

Frames go in with direct chunk writes of the blobs the simulator already compresses (one frame per chunk), so a
4M data file of 100 frames costs a few memory copies, not 100 compressions.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import h5py
import hdf5plugin
import numpy as np

from hidra_eiger.sim import compress
from hidra_eiger.sim.frames import FrameGenerator

log = logging.getLogger(__name__)

__all__ = ["FrameChunks", "data_file", "master_file"]

# detector config key -> where the master keeps it (NeXus NXmx paths, as DECTRIS masters lay them out)
_MASTER_VALUES = {
    "count_time": "instrument/detector/count_time", "frame_time": "instrument/detector/frame_time",
    "x_pixel_size": "instrument/detector/x_pixel_size", "y_pixel_size": "instrument/detector/y_pixel_size",
    "sensor_material": "instrument/detector/sensor_material",
    "sensor_thickness": "instrument/detector/sensor_thickness",
    "detector_distance": "instrument/detector/detector_distance",
    "beam_center_x": "instrument/detector/beam_center_x", "beam_center_y": "instrument/detector/beam_center_y",
    "bit_depth_image": "instrument/detector/bit_depth_image", "description": "instrument/detector/description",
    "detector_number": "instrument/detector/detector_number",
    "nimages": "instrument/detector/detectorSpecific/nimages",
    "ntrigger": "instrument/detector/detectorSpecific/ntrigger",
    "x_pixels_in_detector": "instrument/detector/detectorSpecific/x_pixels_in_detector",
    "y_pixels_in_detector": "instrument/detector/detectorSpecific/y_pixels_in_detector",
    "photon_energy": "instrument/detector/detectorSpecific/photon_energy",
    "software_version": "instrument/detector/detectorSpecific/software_version",
    "compression": "instrument/detector/detectorSpecific/compression",
    "wavelength": "instrument/beam/incident_wavelength",
}


class FrameChunks:
    """Frame ``index`` as an HDF5 chunk in the series' compression, each distinct frame compressed once."""

    def __init__(self, generator: FrameGenerator, compression: str) -> None:
        self.shape = generator.shape
        self.dtype = generator.dtype
        self.compression = compression
        encode: Callable[[np.ndarray], bytes] = {
            "bslz4": compress.bslz4_hdf5, "lz4": compress.lz4_hdf5,
            "none": lambda frame: np.ascontiguousarray(frame).astype(frame.dtype.newbyteorder("<")).tobytes(),
        }[compression]
        self._chunk = lru_cache(maxsize=generator.distinct)(lambda slot: encode(generator.frame(slot)))
        self._distinct = generator.distinct

    def __call__(self, index: int) -> bytes:
        return self._chunk(index % self._distinct)

    def filter(self) -> Mapping[str, Any]:
        if self.compression == "bslz4":
            return hdf5plugin.Bitshuffle(cname="lz4")
        return hdf5plugin.LZ4() if self.compression == "lz4" else {}


def _image(fill: Callable[[h5py.File], None]) -> bytes:
    # NOTE: the core driver without backing store keeps the file in RAM; the name only has to be unique
    with h5py.File(f"hidra-eiger-sim-{uuid.uuid4().hex}.h5", "w", driver="core", backing_store=False) as f:
        f.attrs["NX_class"] = "NXroot"
        fill(f)
        f.flush()
        return bytes(f.id.get_file_image())


def _frames(group: h5py.Group, chunks: FrameChunks, indices: Sequence[int], image_nr_start: int) -> None:
    dset = group.create_dataset("data", shape=(len(indices), *chunks.shape), dtype=chunks.dtype.newbyteorder("<"),
                                chunks=(1, *chunks.shape), **chunks.filter())
    for n, index in enumerate(indices):
        dset.id.write_direct_chunk((n, 0, 0), chunks(index))
    ids = np.asarray(indices, dtype=np.uint64) + image_nr_start
    dset.attrs["image_nr_low"] = int(ids[0]) if len(ids) else image_nr_start
    dset.attrs["image_nr_high"] = int(ids[-1]) if len(ids) else image_nr_start - 1
    group.create_dataset("image_id", data=ids)


def _entry(f: h5py.File) -> h5py.Group:
    entry = f.create_group("entry")
    entry.attrs["NX_class"] = "NXentry"
    data = entry.create_group("data")
    data.attrs["NX_class"] = "NXdata"
    return entry


def data_file(chunks: FrameChunks, indices: Sequence[int], image_nr_start: int) -> bytes:
    """A ``_data_NNNNNN.h5``: ``/entry/data/data`` (one frame per chunk) with image ids ``image_nr_start + i``."""
    return _image(lambda f: _frames(_entry(f)["data"], chunks, indices, image_nr_start))


def master_file(detector: Mapping[str, Any], links: Sequence[str], chunks: FrameChunks | None = None,
                indices: Sequence[int] = (), image_nr_start: int = 1) -> bytes:
    """A ``_master.h5``: detector values, external links ``/entry/data/data_NNNNNN`` to the data files' names
    (``links``, relative to the master's directory); with ``chunks`` the frames themselves (nimages_per_file 0).
    """
    def fill(f: h5py.File) -> None:
        entry = _entry(f)
        for key, where in _MASTER_VALUES.items():
            if key in detector:
                entry[where] = detector[key]
        for n, name in enumerate(links, start=1):
            entry["data"][f"data_{n:06d}"] = h5py.ExternalLink(name, "/entry/data/data")
        if chunks is not None:
            _frames(entry["data"], chunks, indices, image_nr_start)

    return _image(fill)
