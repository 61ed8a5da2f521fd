"""The writer's decoding of §8 response bodies: long flat numeric lists go straight to numpy, everything else
through ``json``, and the result is the same values either way."""
from __future__ import annotations

import json

import numpy as np
import pytest

from hidra_databuffer.dbwriter.query import QueryError, check_response, decode_body


def _plain(answer: object) -> object:
    if isinstance(answer, np.ndarray):
        return answer.tolist()
    if isinstance(answer, list):
        return [_plain(v) for v in answer]
    if isinstance(answer, dict):
        return {k: _plain(v) for k, v in answer.items()}
    return answer


@pytest.mark.parametrize("dump", [json.dumps, lambda v: json.dumps(v, indent=2),
                                  lambda v: json.dumps(v, separators=(",", ":"))])
def test_decoded_body_has_exactly_the_values_json_gives(dump: object) -> None:
    rng = np.random.default_rng(7)
    values = [rng.integers(0, 65536, 262144).tolist(), (rng.standard_normal(2000) * 1e5).tolist(),
              rng.integers(-2**62, 2**62, 1000).tolist(), [2**64 - 1] * 400, [2**63 - 1] * 400, [1.5, 2],
              "text [1, 2, 3] \"value\": [4, 5]", True, 3.25, [[1, 2]] * 300, ["a"] * 500, [float("inf")] * 300]
    body = [{"channel": {"name": "C", "backend": "b"}, "configs": [{"type": "uint16", "shape": [512, 512]}],
             "data": [{"pulseId": n, "globalDate": "d", "value": v, "shape": [1]} for n, v in enumerate(values)]}]
    text = dump(body).encode()  # type: ignore[operator]
    answer = decode_body(text)
    assert _plain(answer) == json.loads(text)
    fast = [type(ev["value"]) is np.ndarray for ev in answer[0]["data"]]
    assert fast[:3] == [True, True, True] and not any(fast[3:])  # huge ints, short, nested, text: plain json


def test_malformed_long_list_is_reported_by_json() -> None:
    text = b'[{"channel": {"name": "a"}, "data": [{"value": [' + b"1, " * 600 + b"x]}]}]"
    with pytest.raises(ValueError, match="Expecting value"):
        decode_body(text)


def test_dict_bodies_are_errors() -> None:
    with pytest.raises(QueryError, match="server error"):
        check_response({"status": 500, "error": "x"})
    with pytest.raises(QueryError, match="dict instead of a list"):
        check_response({"status": 400, "error": "x"})
