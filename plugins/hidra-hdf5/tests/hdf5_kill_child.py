"""Run by test_hdf5_writer: feeds the hdf5 writer frames ``first..last`` of a series in commit batches of 4 and
prints the highest confirmed image id after each commit, until it is killed (or done)."""
from __future__ import annotations

import sys

from hidra_eiger.sim.compress import bslz4
from hidra_eiger.sim.frames import FrameGenerator
from test_series_rules import SeriesWriterContract as C

from hidra_core import FRAME, SERIES_START
from hidra_hdf5.writer import Hdf5Writer, Hdf5WriterConfig

SHAPE = (64, 80)


def main(root: str, first: int, last: int) -> None:
    writer = Hdf5Writer(Hdf5WriterConfig(), target=root)
    generator = FrameGenerator(SHAPE, "<u2", seed=3)
    handles = []
    if first == 0:
        handles.append(C.send(writer, C.item(root, SERIES_START, "s", C.start_meta())))  # type: ignore[arg-type]
    for n in range(first, last):
        frame = generator.frame(n)
        meta = C.frame_meta(n, frame, "bslz4")
        handles.append(C.send(writer, C.item(root, FRAME, "s", meta), bslz4(frame)))  # type: ignore[arg-type]
        if len(handles) >= 4:
            errors = writer.commit_each(handles)
            assert errors == [None] * len(handles), errors
            handles = []
            print(n, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
