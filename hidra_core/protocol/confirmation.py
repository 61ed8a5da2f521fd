"""Confirmations (receiver PUB -> sender SUB, hidra4-protocol.md §7.2) and the receiver's liveness beacon.

A confirmation is ``[topic, file_id, chunk_number]``; ours adds a fourth frame to the last chunk's
confirmation, ``json({"last_chunk": true, "checksum_algorithm": ..., "file_checksum": ...})``, which is the
proof our sender needs before it may remove a source. The beacon ``[HEARTBEAT_TOPIC, instance, json(info)]``
lets our sender know the subscription is live and when a receiver restarted; 4.x senders never subscribe to it.
"""
from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii
from dataclasses import dataclass
from typing import Any, Sequence

from hidra_core.errors import ProtocolError

__all__ = ["Confirmation", "HEARTBEAT_TOPIC", "decode_confirmation", "encode_confirmations", "encode_heartbeat"]

HEARTBEAT_TOPIC = b"hidra.receiver.alive"


def encode_confirmations(topic: bytes, file_id: str, chunk_count: int, algorithm: str | None,
                         checksum: str | None) -> list[list[bytes]]:
    """The messages confirming every chunk of one durable file; the last one carries the checksum."""
    fid = file_id.encode()
    # NOTE: the same bytes as json.dumps() of the dict, at a third of its cost (one per stored file)
    proof = (f'{{"last_chunk": true, "checksum_algorithm": {_json_text(algorithm)}, "file_checksum":'
             f' {_json_text(checksum)}}}').encode()
    if chunk_count == 1:
        return [[topic, fid, b"0", proof]]
    messages = [[topic, fid, str(n).encode()] for n in range(chunk_count)]
    messages[-1].append(proof)
    return messages


def _json_text(value: str | None) -> str:
    return "null" if value is None else encode_basestring_ascii(value)


def encode_heartbeat(instance: str, info: dict[str, Any]) -> list[bytes]:
    return [HEARTBEAT_TOPIC, instance.encode(), json.dumps(info).encode()]


@dataclass(frozen=True)
class Confirmation:
    file_id: str
    chunk_number: int
    checksum: str | None  # None: no proof frame (a 4.x receiver, or not the last chunk)


def decode_confirmation(frames: Sequence[bytes]) -> Confirmation:
    if len(frames) not in (3, 4):
        raise ProtocolError(f"a confirmation has 3 or 4 frames, got {len(frames)}")
    try:
        file_id = frames[1].decode()
        number = int(frames[2])
        proof = json.loads(frames[3]) if len(frames) == 4 else None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # NOTE: RecursionError: nested too deeply
        raise ProtocolError(f"malformed confirmation: {exc}") from None
    checksum = proof.get("file_checksum") if isinstance(proof, dict) else None
    return Confirmation(file_id, number, checksum if isinstance(checksum, str) else None)
