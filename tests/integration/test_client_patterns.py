"""A client's regular expression must not stop the storage path (issue item 10)."""
from __future__ import annotations

import json
import re
import socket

import pytest
import zmq

from hidra_proc import intact, wait_until, write_file

pytestmark = pytest.mark.integration


def test_catastrophic_client_pattern_neither_stalls_storage_nor_blocks_sigterm(storage_path):
    pair = storage_path
    pair.start_receiver()
    sender = pair.start_sender()
    com_endpoint = re.search(r"com (\S+),", sender.text()).group(1)
    ctx = zmq.Context()
    pull, com = ctx.socket(zmq.PULL), ctx.socket(zmq.REQ)
    try:
        for s in (pull, com):
            s.linger = 0
        target = f"{socket.getfqdn()}:{pull.bind_to_random_port('tcp://127.0.0.1')}"
        com.connect(com_endpoint)
        # NOTE: with a backtracking engine this pattern takes exponential time on names without a Z.
        com.send_multipart([b"4.4.3", b"evil", b"START_STREAM", json.dumps([[target, 1, "(.*)*Z"]]).encode()])
        assert com.poll(5000) and com.recv_multipart() == [b"START_STREAM"]
        expected = {f"run/{'a' * 40}_{i:03d}.dat": 1000 + i for i in range(200)}
        expected.update({f"run/hit_{i}.Z": 10 for i in range(3)})  # the pattern still selects what it should
        for rel, size in expected.items():
            write_file(pair.source / rel, size)
        wait_until(lambda: all(intact(pair.target, r, s) for r, s in expected.items()), 120,
                   "every file stored while the pattern is registered")
        got: set[str] = set()

        def client_got_hits() -> bool:
            while pull.poll(0):
                got.add(json.loads(pull.recv_multipart()[0])["filename"])
            return {f"hit_{i}.Z" for i in range(3)} <= got

        wait_until(client_got_hits, 30, "the matching files at the client")
        assert got == {f"hit_{i}.Z" for i in range(3)}
        assert sender.stop() == 0  # within Hidra.stop's deadline: SIGTERM is served
    finally:
        pull.close()
        com.close()
        ctx.term()
