"""HiDRA writer ``hdf5``: one HDF5 file per detector series, frames stored as direct chunk writes."""
from __future__ import annotations

from hidra_hdf5.framing import SeriesRefused
from hidra_hdf5.writer import Hdf5Writer, Hdf5WriterConfig

__all__ = ["Hdf5Writer", "Hdf5WriterConfig", "SeriesRefused"]
