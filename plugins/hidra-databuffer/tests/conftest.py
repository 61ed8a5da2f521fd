"""Shared by the databuffer tests. NOTE: OMP_NUM_THREADS=1 before anything imports bitshuffle: OpenMP threads of
sender and receiver spin against each other on small machines (databuffer.md §11)."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
# NOTE: here, before any test module imports them, so their asserts explain themselves wherever they are used
pytest.register_assert_rewrite("broker_proc", "up_proc")
