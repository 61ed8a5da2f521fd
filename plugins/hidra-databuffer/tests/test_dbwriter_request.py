"""Decoding the writing request (databuffer.md §4) from messages the real ``bsread`` sender produces, and the
``.err`` line format (§5, §7)."""
from __future__ import annotations

import json
import re

import pytest
import zmq
from bsread.handlers.compact import Handler
from bsread.sender import Sender
from dbwriter_support import request_record

from hidra_databuffer.dbwriter.errfile import format_line, parse_line, write_err
from hidra_databuffer.dbwriter.request import REQUEST_CHANNELS, RequestError, WriteRequest, decode_message


def _frames(compression: str | None, records: list[dict[str, object]]) -> list[list[bytes]]:
    sender = Sender(port="*", address="tcp://127.0.0.1", data_header_compression=compression, send_timeout=10000)
    for name, metadata in REQUEST_CHANNELS:
        sender.add_channel(name, metadata=dict(metadata))
    sender.open()
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    try:
        pull.connect(sender.stream.socket.getsockopt(zmq.LAST_ENDPOINT).decode())
        for record in records:
            sender.send(record["data_api_request"], record["parameters"], record["timestamp"], check_data=False)
        return [pull.recv_multipart() for _ in records]
    finally:
        pull.close(linger=0)
        context.term()
        sender.close()


@pytest.mark.parametrize("compression", [None, "lz4", "bitshuffle_lz4"])
def test_request_sent_by_bsread_decodes_to_the_same_three_fields(compression: str | None) -> None:
    records = [request_record(["A:B", "C:FPICTURE"], 5, 9, f"/data/ü{n}.h5", extra=[1, "x"]) for n in range(2)]
    messages = _frames(compression, records)
    assert [len(m) for m in messages] == [8, 8]  # main header, data header, 3 × (value, timestamp)
    handler = Handler()  # NOTE: one per socket: the second message reuses the decoders cached by header hash
    for record, frames in zip(records, messages):
        request = decode_message(handler, frames)
        assert request.record() == record  # inner strings byte for byte, timestamp exact as float64
        assert request.output_file == json.loads(str(record["parameters"]))["output_file"]


def test_message_without_the_request_channels_is_refused_with_their_names() -> None:
    sender = Sender(port="*", address="tcp://127.0.0.1", send_timeout=10000)
    sender.add_channel("other", metadata={"type": "float64", "shape": [1]})
    sender.open()
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    try:
        pull.connect(sender.stream.socket.getsockopt(zmq.LAST_ENDPOINT).decode())
        sender.send(1.0, check_data=False)
        frames = pull.recv_multipart()
    finally:
        pull.close(linger=0)
        context.term()
        sender.close()
    with pytest.raises(RequestError, match=r"lacks the request channels \['data_api_request', 'parameters'"):
        decode_message(Handler(), frames)


def test_err_file_is_one_audit_line_without_newline_and_parses_back(tmp_path: object) -> None:
    record = request_record(["A:B"], 1, 2, f"{tmp_path}/x/out.h5")
    request = WriteRequest.from_record(record)
    path = write_err(request)
    text = open(path, encoding="utf-8").read()
    assert path.endswith("out.h5.err") and "\n" not in text and re.match(r"^\[\d{8}-\d{6}\] \{", text)
    assert json.loads(text[18:]) == record and parse_line(text) == request
    assert format_line(request, 0.0)[16:18] == "] " and parse_line(format_line(request)) == request


def test_request_without_output_file_is_refused() -> None:
    record = request_record(["A:B"], 1, 2, "x.h5")
    record["parameters"] = json.dumps({"general/user": "u"})
    with pytest.raises(RequestError, match="output_file"):
        WriteRequest.from_record(record)
