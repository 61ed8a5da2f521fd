"""The DataBuffer HDF5 writer service (``hidra-databuffer-writer``) and replay (``hidra-databuffer-replay``).

databuffer.md §4 (the writing request), §6 (the writer), §7 (``.err`` files and replay), §8 (the data API) and
§9 (the two HDF5 layouts).
"""
from __future__ import annotations
