"""Hypothesis strategies and settings shared by the codec fuzz tests: hostile bytes, JSON that is almost right,
names at and past the file-system limits, invalid UTF-8."""
from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

#: every codec test: bounded (HIDRA_FUZZ_EXAMPLES raises it for a long hunt), no example database written into
#: the checkout, no per-example deadline (2 busy cores)
FUZZ = settings(max_examples=int(os.environ.get("HIDRA_FUZZ_EXAMPLES", "150")), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

#: byte strings that are not UTF-8: a lone continuation byte, a truncated sequence, an overlong form, a surrogate
INVALID_UTF8 = [b"\x80", b"\xc3", b"\xe2\x82", b"\xc0\xaf", b"\xed\xa0\x80", b"\xff\xfe", b"name\xffx"]

#: JSON nested deeper than Python's recursion limit: the C scanner raises RecursionError, not ValueError
DEEP_JSON = [b"[" * 100_000, b'{"a":' * 100_000, b"[" * 100_000 + b"]" * 100_000]

json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)

#: names a hostile peer might send: ordinary, dot-dot, absolute, control characters, surrogates, 4,096 bytes
names = (st.text(max_size=40)
         | st.sampled_from(["..", ".", "", "/etc/passwd", "../../x", "a/../../b", ".hidra-partial", "a\\b",
                            "x" * 255, "x" * 256, "x" * 4096, "a/" * 2048, "\udcff", "\x00", "é" * 2048]))


def hostile_bytes() -> st.SearchStrategy[bytes]:
    """Random bytes, invalid UTF-8, JSON too deep to parse, or JSON of an unexpected shape."""
    return (st.binary(max_size=200) | st.sampled_from(INVALID_UTF8 + DEEP_JSON)
            | json_values.map(lambda v: json.dumps(v).encode()))


def frames(max_frames: int = 6) -> st.SearchStrategy[list[bytes]]:
    return st.lists(hostile_bytes(), min_size=0, max_size=max_frames)


def json_frame(mapping: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    """A JSON object frame, now and then with a byte flipped or cut short (almost valid)."""
    def damage(raw: bytes, how: int, at: int) -> bytes:
        if not raw or how == 0:
            return raw
        at %= len(raw)
        return raw[:at] if how == 1 else raw[:at] + bytes([raw[at] ^ 0x80]) + raw[at + 1:]

    encoded = mapping.map(lambda m: json.dumps(m).encode())
    return st.builds(damage, encoded, st.sampled_from([0, 0, 0, 1, 2]), st.integers(min_value=0))
