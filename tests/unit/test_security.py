"""The process's CURVE state (hidra_core.security) as plugins meet it: ``secure_socket`` and ``connect_stream``."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import zmq

from hidra_core import connect_stream, secure_socket
from hidra_core.security import Security, SecurityConfig, generate


@pytest.fixture
def curve_on(tmp_path: Path, zmq_context: zmq.Context, request: pytest.FixtureRequest) -> Iterator[Security]:
    for name in ("sender", "receiver"):
        generate(str(tmp_path), name)
    plain = getattr(request, "param", [])
    security = Security(SecurityConfig(curve=True, keys_dir=str(tmp_path), plain=plain), "sender", "<test>")
    security.start(zmq_context)
    try:
        yield security
    finally:
        security.stop()


def test_detector_stream_with_curve_on_must_be_listed_as_plain(curve_on, zmq_context):
    with pytest.raises(ValueError, match="tcp://127.0.0.1:9: .*add 'stream' to security.plain"):
        connect_stream(zmq_context, "tcp://127.0.0.1:9", 10)


@pytest.mark.parametrize("curve_on", [["stream"]], indirect=True)
def test_detector_stream_listed_as_plain_is_read_unencrypted(curve_on, zmq_context):
    sock = connect_stream(zmq_context, "tcp://127.0.0.1:9", 10)
    try:
        assert sock.mechanism == zmq.NULL
    finally:
        sock.close()


def test_plugin_socket_secured_for_a_role_becomes_a_curve_server_of_that_domain(curve_on, zmq_context):
    sock = zmq_context.socket(zmq.ROUTER)
    try:
        assert secure_socket(sock, "ingest", server=True)
        assert sock.mechanism == zmq.CURVE and sock.curve_server and sock.zap_domain == b"producers"
    finally:
        sock.close()


def test_without_curve_plugin_sockets_stay_plain(zmq_context):
    sock = zmq_context.socket(zmq.ROUTER)
    try:
        assert not secure_socket(sock, "ingest", server=True)
        assert sock.mechanism == zmq.NULL
    finally:
        sock.close()
