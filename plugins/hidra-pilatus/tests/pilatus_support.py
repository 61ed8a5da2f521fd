"""What the pilatus tests share: a header with chosen values, and the metadata the source must make of it."""
from __future__ import annotations

from typing import Any

from hidra_pilatus.sim import camserver_header

#: values unlike the simulator's defaults, so a test cannot pass on defaults
VALUES: dict[str, Any] = {
    "detector": "PILATUS 6M, S/N 60-0127", "exposure_time": 0.0123, "exposure_period": 0.0125, "tau": 1.991e-07,
    "count_cutoff": 1077896, "threshold": 6344, "n_excluded_pixels": 321, "wavelength": 1.00003,
    "distance": 0.4321, "beam_x": 1234.56, "beam_y": 1250.25, "start_angle": 47.25, "angle_increment": 0.05,
    "thickness": 0.001,
}

HEADER = camserver_header(**VALUES)

#: the metadata of ``HEADER`` (fabio reads the separators ", :=()#" as spaces, so the detector loses its comma)
EXPECTED: dict[str, Any] = {
    "detector": "PILATUS 6M S/N 60-0127", "sensor_material": "Silicon", "sensor_thickness_m": 0.001,
    "pixel_size_x_m": 172e-6, "pixel_size_y_m": 172e-6, "exposure_time_s": 0.0123, "exposure_period_s": 0.0125,
    "tau_s": 1.991e-07, "count_cutoff_counts": 1077896, "threshold_setting_eV": 6344.0, "gain_setting": "mid gain",
    "n_excluded_pixels": 321, "excluded_pixels": "badpix_mask.tif", "wavelength_angstrom": 1.00003,
    "detector_distance_m": 0.4321, "beam_x_px": 1234.56, "beam_y_px": 1250.25, "start_angle_deg": 47.25,
    "angle_increment_deg": 0.05, "phi_deg": 47.25, "phi_increment_deg": 0.05, "oscillation_axis": "X",
    "n_oscillations": 1, "image_path": "/ramdisk/", "trim_file": "p60-0001_E12684_T6342.bin",
}


def assert_metadata(meta: dict[str, Any], *, fmt: str = "cbf", shape: tuple[int, int] = (195, 487)) -> None:
    """``meta`` has every value of ``HEADER`` as written, the image's shape and type, and the raw header text."""
    assert {key: meta.get(key) for key in EXPECTED} == EXPECTED
    assert (meta["format"], meta["shape"], meta["dtype"]) == (fmt, list(shape), "int32")
    assert meta["header"].strip() == HEADER.strip()
    assert "metadata_error" not in meta
