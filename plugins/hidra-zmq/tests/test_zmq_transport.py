"""The ``tcp``/``ipc``/``inproc`` transport: the transport contract per scheme, plus its own options."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import zmq

from hidra_core.testing import TransportContract

from hidra_zmq.transport import ZmqTransport, ZmqTransportConfig


class TestTcpContract(TransportContract):
    driver_name = "tcp"


class TestIpcContract(TransportContract):
    driver_name = "ipc"


class TestInprocContract(TransportContract):
    driver_name = "inproc"


def test_config_options_reach_the_socket(zmq_context: zmq.Context) -> None:
    transport = ZmqTransport(ZmqTransportConfig(linger_ms=123, heartbeat_ivl_ms=700, heartbeat_timeout_ms=2100,
                                                reconnect_ivl_ms=50, reconnect_ivl_max_ms=900))
    sock = transport.open_socket(zmq_context, zmq.PUSH, "tcp://127.0.0.1:0", bind=True, hwm=9)
    try:
        got = (sock.linger, sock.sndhwm, sock.rcvhwm, sock.heartbeat_ivl, sock.heartbeat_timeout,
               sock.reconnect_ivl, sock.reconnect_ivl_max, sock.tcp_keepalive)
    finally:
        sock.close()
    assert got == (123, 9, 9, 700, 2100, 50, 900, 1)


def test_heartbeats_and_keepalive_can_be_turned_off(zmq_context: zmq.Context) -> None:
    transport = ZmqTransport(ZmqTransportConfig(heartbeat_ivl_ms=0, tcp_keepalive=False))
    sock = transport.open_socket(zmq_context, zmq.PULL, "tcp://127.0.0.1:0", bind=True, hwm=1)
    try:
        assert (sock.heartbeat_ivl, sock.tcp_keepalive) == (0, -1)  # -1: the OS default, i.e. not forced on
    finally:
        sock.close()


def test_port_zero_binds_a_free_port(zmq_context: zmq.Context, inproc_transport: Any) -> None:
    first = inproc_transport.open_socket(zmq_context, zmq.PULL, "tcp://127.0.0.1:0", bind=True, hwm=1)
    second = inproc_transport.open_socket(zmq_context, zmq.PULL, "tcp://127.0.0.1:0", bind=True, hwm=1)
    try:
        ports = {ZmqTransport.endpoint_of(s).rsplit(":", 1)[1] for s in (first, second)}
    finally:
        first.close()
        second.close()
    assert len(ports) == 2 and "0" not in ports


def test_address_in_use_is_an_oserror_and_closes_the_socket(zmq_context: Any, bound_pair: Any,
                                                            inproc_transport: Any) -> None:
    bound, _connected = bound_pair(zmq.PULL, zmq.PUSH, "tcp")
    before = set(zmq_context.open_sockets())
    with pytest.raises(OSError, match="cannot bind"):
        inproc_transport.open_socket(zmq_context, zmq.PULL, bound.last_endpoint.decode(), bind=True, hwm=1)
    assert [s for s in zmq_context.open_sockets() if s not in before] == []


def test_ipc_bind_creates_the_socket_directory(zmq_context: zmq.Context, ipc_dir: Path,
                                               inproc_transport: Any) -> None:
    endpoint = f"ipc://{ipc_dir}/run/hidra/data.sock"
    sock = inproc_transport.open_socket(zmq_context, zmq.PULL, endpoint, bind=True, hwm=1)
    try:
        assert (ipc_dir / "run" / "hidra" / "data.sock").exists()
    finally:
        sock.close()


@pytest.mark.parametrize("endpoint", ["udp://127.0.0.1:5", "tcp://", "127.0.0.1:5"])
def test_foreign_or_incomplete_endpoints_are_refused(zmq_context: zmq.Context, inproc_transport: Any,
                                                     endpoint: str) -> None:
    with pytest.raises(ValueError, match="is not tcp://host:port"):
        inproc_transport.open_socket(zmq_context, zmq.PUSH, endpoint, bind=False, hwm=1)


def test_one_driver_instance_serves_every_scheme(zmq_context: zmq.Context, inproc_transport: Any,
                                                 ipc_dir: Path) -> None:
    for endpoint in ("inproc://scheme-check", f"ipc://{ipc_dir}/s.sock", "tcp://127.0.0.1:0"):
        pull = inproc_transport.open_socket(zmq_context, zmq.PULL, endpoint, bind=True, hwm=4)
        push = inproc_transport.open_socket(zmq_context, zmq.PUSH, ZmqTransport.endpoint_of(pull), bind=False,
                                            hwm=4)
        try:
            push.send(endpoint.encode())
            assert pull.poll(5000) and pull.recv() == endpoint.encode()
        finally:
            push.close()
            pull.close()
