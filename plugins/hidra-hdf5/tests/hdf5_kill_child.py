"""Run by test_hdf5_writer: feeds the hdf5 writer a series (start, frames ``0..count-1`` in commit batches of 4,
and with ``end`` its end) and prints the highest confirmed image id after each commit, until it is killed.

With ``die_at`` N > 0 it SIGKILLs itself right after the N-th HDF5 file open or rename the writer makes, so that
every such point of the series can be tested as the moment of a crash.
"""
from __future__ import annotations

import os
import signal
import sys
from typing import Any, Callable

import h5py
from hidra_eiger.sim.compress import bslz4
from hidra_eiger.sim.frames import FrameGenerator
from test_series_rules import SeriesRules as C

from hidra_core import FRAME, SERIES_END, SERIES_START
from hidra_hdf5.writer import Hdf5Writer, Hdf5WriterConfig

SHAPE = (64, 80)


def _die_after(calls: int) -> None:
    seen = [0]

    def wrap(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            result = real(*args, **kwargs)
            seen[0] += 1
            if seen[0] == calls:
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        return call

    h5py.File = wrap(h5py.File)
    h5py.h5f.open = wrap(h5py.h5f.open)
    os.replace = wrap(os.replace)


def main(root: str, count: int, end: bool, die_at: int) -> None:
    writer = Hdf5Writer(Hdf5WriterConfig(), target=root)
    generator = FrameGenerator(SHAPE, "<u2", seed=3)
    if die_at:
        _die_after(die_at)
    handles = [C.send(writer, C.item(root, SERIES_START, "s", C.start_meta()))]  # type: ignore[arg-type]
    for n in range(count):
        frame = generator.frame(n)
        meta = C.frame_meta(n, frame, "bslz4")
        handles.append(C.send(writer, C.item(root, FRAME, "s", meta), bslz4(frame)))  # type: ignore[arg-type]
        if len(handles) >= 4 or n == count - 1:
            errors = writer.commit_each(handles)
            assert errors == [None] * len(handles), errors
            handles = []
            print(n, flush=True)
    if end:
        handle = C.send(writer, C.item(root, SERIES_END, "s", C.end_meta(count)))  # type: ignore[arg-type]
        assert writer.commit_each([handle]) == [None]
        print("end", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "end", int(sys.argv[4]))
