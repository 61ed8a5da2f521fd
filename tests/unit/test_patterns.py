"""Client patterns: linear-time matching (RE2) with ``re.match`` semantics, refusals, 4.x suffix lists."""
from __future__ import annotations

import json
import logging
import socket

import pytest

from hidra_core.sender.clients.hosts import AccessPolicy, HostResolver
from hidra_core.sender.clients.registry import MAX_PATTERN_LENGTH, Registry, compile_pattern, suffixes_to_pattern
from hidra_core.sender.clients.signals import SignalHandler

ME = socket.getfqdn().lower()


def _handler() -> SignalHandler:
    resolver = HostResolver(0.5)
    policy = AccessPolicy(resolver, ["localhost"], ["localhost"], False)
    return SignalHandler("4.4.3", {"streams": Registry("streams"), "queries": Registry("queries")}, policy,
                         resolver, True, lambda: {})


def _start(h: SignalHandler, pattern: object) -> list[bytes]:
    targets = json.dumps([[f"{ME}:6000", 1, pattern]]).encode()
    return h.handle([b"4.4.3", b"1", b"START_STREAM", targets], "127.0.0.1")


@pytest.mark.parametrize("pattern, last", [("(.*)*Z", "Z"), ("(.*.*)*Z", "Z"), ("(a|aa)*Z", "Z"), ("(a*)*b", "b")])
def test_catastrophic_backtracking_patterns_match_in_linear_time(pattern, last):
    """Python's re takes longer than the test timeout on these names; RE2 answers at once."""
    p = compile_pattern(pattern)
    assert p.match("a" * 50_000) is None
    assert p.match("a" * 50_000 + last) is not None


def test_patterns_keep_re_match_semantics():
    p = compile_pattern(r".*\.cbf$")
    assert p.match("scan_0001.cbf") and not p.match("scan_0001.cbf.tmp")
    assert compile_pattern("scan").match("scan_0001.h5")  # anchored at the start only, like re.match
    assert not compile_pattern("0001").match("scan_0001.h5")
    assert compile_pattern(r".*\.h5\Z").match("a.h5") and not compile_pattern(r".*\.h5\Z").match("a.h5x")
    assert compile_pattern(r"a\\Z").match("a\\Z")  # an escaped backslash before Z is no anchor


@pytest.mark.parametrize("pattern, reason", [
    (r"(a)\1", "invalid escape sequence"),  # backreference
    (r"(?=a)a", "invalid perl operator"),  # lookahead
    (r"(?<!b)a", "invalid perl operator"),  # lookbehind
    (r"(unclosed", "missing )"),
    ("a" * (MAX_PATTERN_LENGTH + 1), f"more than {MAX_PATTERN_LENGTH}"),
])
def test_patterns_the_linear_matcher_cannot_take_are_refused_with_the_reason(pattern, reason, caplog):
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        compile_pattern(pattern)
    h = _handler()
    with caplog.at_level(logging.INFO, logger="hidra_core.sender.clients.signals"):
        assert _start(h, pattern) == [b"NO_VALID_SIGNAL"]
    assert reason in caplog.text and "refused" in caplog.text
    assert h.registries["streams"].sets == []
    assert _start(h, ".*") == [b"START_STREAM"]  # still serving


def test_suffix_lists_of_3_1_2_clients_still_work():
    h = _handler()
    assert _start(h, [".cbf", ".tif"]) == [b"START_STREAM"]
    member = h.registries["streams"].sets[0].members[0]
    assert member.matches("x.cbf") and member.matches("y.tif") and not member.matches("x.h5")
    assert suffixes_to_pattern([""]) == ".*"
    assert _start(h, [""]) == [b"START_STREAM"]
    assert _start(_handler(), ["." + "x" * MAX_PATTERN_LENGTH]) == [b"NO_VALID_SIGNAL"]  # too long in total


def test_names_that_are_not_valid_text_are_matched_not_fatal():
    h = _handler()
    _start(h, r".*\.tif$")
    member = h.registries["streams"].sets[0].members[0]
    assert member.matches("scan\udcff.tif") and not member.matches("scan\udcff.h5")
