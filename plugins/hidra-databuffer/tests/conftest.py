"""Shared by the databuffer tests. NOTE: OMP_NUM_THREADS=1 before anything imports bitshuffle: OpenMP threads of
sender and receiver spin against each other on small machines (databuffer.md §11)."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
