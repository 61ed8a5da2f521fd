"""``hidra-pilatus-sim``: a stand-in for a PILATUS camserver that writes CBF (or TIFF) images with fabio.

Each image carries a Pilatus 6M header as camserver writes it (``camserver_header``), and is written in one of the
camserver's two ways: ``in_place`` (the final name, opened once and written in pieces) or ``rename`` (a hidden
temporary name, then renamed to the final one). Tests and the benchmark use the same functions.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any, Sequence

import numpy
from fabio.cbfimage import CbfImage

__all__ = ["CAMSERVER_VALUES", "camserver_header", "image_bytes", "main", "write_image"]

#: the values of the default header, as written (``camserver_header`` takes any of them as keyword arguments)
CAMSERVER_VALUES: dict[str, Any] = {
    "detector": "PILATUS 6M, S/N 60-0001", "time": "2026-11-30T05:47:04.123", "exposure_time": 0.097,
    "exposure_period": 0.1, "tau": 383.8e-09, "count_cutoff": 1048500, "threshold": 6342,
    "n_excluded_pixels": 1195, "wavelength": 0.978, "distance": 0.25, "beam_x": 1231.5, "beam_y": 1263.25,
    "start_angle": 12.5, "angle_increment": 0.1, "thickness": 0.00045,
}


def camserver_header(**values: Any) -> str:
    """The Pilatus header text (``# Key value unit`` lines) of a PILATUS 6M camserver with ``values``."""
    v = {**CAMSERVER_VALUES, **values}
    return "\r\n".join([
        f"# Detector: {v['detector']}", f"# {v['time']}", "# Pixel_size 172e-6 m x 172e-6 m",
        f"# Silicon sensor, thickness {v['thickness']:.6f} m", f"# Exposure_time {v['exposure_time']:.7f} s",
        f"# Exposure_period {v['exposure_period']:.7f} s", f"# Tau = {v['tau']:.4g} s",
        f"# Count_cutoff {v['count_cutoff']} counts", f"# Threshold_setting: {v['threshold']} eV",
        "# Gain_setting: mid gain (vrf = -0.200)", f"# N_excluded_pixels = {v['n_excluded_pixels']}",
        "# Excluded_pixels: badpix_mask.tif", "# Flat_field: FF_p60-0001_E12684_T6342_vrf_m0p20.tif",
        "# Trim_file: p60-0001_E12684_T6342.bin", "# Image_path: /ramdisk/",
        f"# Wavelength {v['wavelength']:.5f} A", f"# Detector_distance {v['distance']:.5f} m",
        f"# Beam_xy ({v['beam_x']:.2f}, {v['beam_y']:.2f}) pixels",
        f"# Start_angle {v['start_angle']:.4f} deg.", f"# Angle_increment {v['angle_increment']:.4f} deg.",
        "# Detector_2theta 0.0000 deg.", "# Polarization 0.990", "# Alpha 0.0000 deg.", "# Kappa 0.0000 deg.",
        f"# Phi {v['start_angle']:.4f} deg.", f"# Phi_increment {v['angle_increment']:.4f} deg.",
        "# Chi 0.0000 deg.", "# Chi_increment 0.0000 deg.", "# Oscillation_axis X, CW", "# N_oscillations 1",
    ])


def image_bytes(header: str, shape: tuple[int, int] = (2527, 2463), seed: int = 0, tiff: bool = False) -> bytes:
    """The bytes of a CBF (written by fabio) or a TIFF (ImageDescription = the header) with Poisson counts."""
    data = numpy.random.default_rng(seed).poisson(3, shape).astype(numpy.int32)
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "image")
        if tiff:
            from PIL import Image  # NOTE: Pillow comes with fabio; it writes the description tag verbatim

            Image.fromarray(data).save(path, format="TIFF", tiffinfo={270: header})
        else:
            CbfImage(data=data, header={"_array_data.header_convention": "PILATUS_1.2",
                                        "_array_data.header_contents": header}).write(path)
        with open(path, "rb") as f:
            return f.read()


def write_image(path: str, data: bytes, pattern: str = "in_place", pieces: int = 1, pause_s: float = 0.0) -> None:
    """Write ``data`` to ``path`` as a camserver does: ``in_place`` or ``rename`` (from ``.<name>.tmp``)."""
    directory, name = os.path.split(path)
    target = path if pattern == "in_place" else os.path.join(directory, f".{name}.tmp")
    step = max(1, -(-len(data) // pieces))
    with open(target, "wb") as f:
        for offset in range(0, len(data), step):
            f.write(data[offset:offset + step])
            f.flush()
            if pause_s:
                time.sleep(pause_s)  # NOTE: a slow writer on purpose, not synchronisation
    if pattern == "rename":
        os.rename(target, path)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hidra-pilatus-sim", description=__doc__.split("\n\n")[0])
    p.add_argument("directory", help="where the images go (the camserver's image path)")
    p.add_argument("--series", default="img", help="name prefix: <series>_<NNNNN>.cbf (default img)")
    p.add_argument("--images", type=int, default=1, help="number of images (default 1)")
    p.add_argument("--pattern", choices=["in_place", "rename"], default="rename", help="how each is written")
    p.add_argument("--period", type=float, default=0.0, help="seconds between images (default 0)")
    p.add_argument("--tiff", action="store_true", help="write TIFF instead of CBF")
    args = p.parse_args(argv)
    for frame in range(1, args.images + 1):
        header = camserver_header(start_angle=12.5 + 0.1 * (frame - 1))
        name = f"{args.series}_{frame:05d}.{'tif' if args.tiff else 'cbf'}"
        write_image(os.path.join(args.directory, name), image_bytes(header, seed=frame, tiff=args.tiff),
                    args.pattern)
        print(name, flush=True)
        if args.period:
            time.sleep(args.period)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
