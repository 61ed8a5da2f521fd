"""Wire codecs. Data messages keep the 4.x two-frame layout; the JSON frame's ``htype`` picks the codec.

A message without ``htype`` is a legacy 4.x message (a file); ``HTYPES`` maps our message types to theirs.
"""
from __future__ import annotations

from hidra_core.protocol.hidra_file import (
    ALIVE_TEST,
    HTYPE,
    HTYPES,
    DataMessage,
    UnknownType,
    decode_data,
    encode_metadata,
    is_alive_test,
)

__all__ = ["ALIVE_TEST", "HTYPE", "HTYPES", "DataMessage", "UnknownType", "decode_data", "encode_metadata",
           "is_alive_test"]
