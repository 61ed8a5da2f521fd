"""Diffraction-like frames: powder rings around the beam centre plus Poisson noise, reproducible from a seed."""
from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["FrameGenerator"]

_RING_RADII = (0.12, 0.21, 0.33, 0.42, 0.57)  # fractions of the frame diagonal, like a few Bragg rings


class FrameGenerator:
    """Frame ``i`` of channel ``c`` depends only on (shape, dtype, seed, flux, c, i % distinct).

    # NOTE: content repeats with period ``distinct`` so that large, fast series cost a few frames of CPU and
    # memory; a test regenerates any frame with the same four arguments.
    """

    def __init__(self, shape: tuple[int, int], dtype: str, seed: int = 0, distinct: int = 16,
                 flux: float = 1.0) -> None:
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"frame shape must be two positive numbers (y, x), got {shape!r}")
        if distinct < 1:
            raise ValueError(f"distinct must be >= 1, got {distinct}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)
        self.seed = seed
        self.distinct = distinct
        self.flux = flux
        self._frame = lru_cache(maxsize=2 * distinct)(self._make)
        self._mean = lru_cache(maxsize=2)(self._mean_image)

    def frame(self, index: int, channel: int = 0) -> np.ndarray:
        """The frame for image ``index`` (0-based) of threshold channel ``channel`` (0-based); read-only."""
        return self._frame(index % self.distinct, channel)

    def _mean_image(self, channel: int) -> np.ndarray:
        y, x = np.indices(self.shape, dtype=np.float32)
        cy, cx = self.shape[0] * 0.47, self.shape[1] * 0.53  # beam centre slightly off the middle, as usual
        r = np.hypot(y - cy, x - cx) / np.hypot(*self.shape)
        mean = 2.0 + 40.0 * np.exp(-r * 6.0)  # diffuse scattering falling off from the centre
        for k, radius in enumerate(_RING_RADII):
            mean += (120.0 / (k + 1)) * np.exp(-(((r - radius) / 0.006) ** 2))
        # NOTE: the second threshold counts only the harder photons: fewer counts, same geometry
        return self.flux * mean / (1 + 2 * channel)

    def _make(self, index: int, channel: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, channel, index])
        counts = rng.poisson(self._mean(channel) * (0.8 + 0.4 * rng.random()))
        frame = counts.astype(self.dtype)
        frame.flags.writeable = False
        return frame
