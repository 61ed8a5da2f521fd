"""The ``security`` section of an instance config: CURVE on every ZeroMQ socket, switched on by one key."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["PLAIN_NAMES", "SecurityConfig"]

#: the sockets that can be left plain, by name (``security.plain``)
PlainName = Literal["com", "request", "control_shim", "status", "data", "confirmations", "ingest", "stream"]
PLAIN_NAMES: tuple[str, ...] = PlainName.__args__  # type: ignore[attr-defined]


class SecurityConfig(BaseModel):
    """CURVE encryption and authentication (ZeroMQ CURVE + a ZAP handler) on every ZeroMQ socket of the process.

    Keys are files made by ``hidra keys generate NAME``; a key is named by its NAME in ``keys_dir`` or given as
    its 40-character Z85 public key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    curve: bool = Field(False, description="true: CURVE encryption and authentication on every ZeroMQ socket (the"
                        " one switch); false: everything plain, as in HiDRA 4.x")
    keys_dir: str = Field("~/.config/hidra/keys", description="directory of the NAME.key / NAME.key_secret files")
    identity: str | None = Field(None, description="this process's own key pair: a name in keys_dir (null: the"
                                 " role, 'sender' or 'receiver')")
    storage_key: str = Field("receiver", description="(sender) public key of the storage receiver(s): a name in"
                             " keys_dir or a Z85 key")
    allow_senders: list[str] = Field(default_factory=lambda: ["sender"], description="(receiver) keys allowed to"
                                     " connect to data, confirmations and status (names or Z85 keys)")
    allow_clients: list[str] = Field(default_factory=list, description="(sender) keys allowed to register as"
                                     " analysis clients on com, request and control_shim (names or Z85 keys)")
    allow_producers: list[str] = Field(default_factory=list, description="(sender) keys allowed to send to an"
                                       " ingest source (zmq_ingest; names or Z85 keys)")
    plain: list[PlainName] = Field(default_factory=list, description="sockets where plain (unauthenticated,"
                                   " unencrypted) access is explicitly enabled, for HiDRA 4.x peers and detector"
                                   " streams that cannot speak CURVE: com, request, control_shim, status, data,"
                                   " confirmations, ingest, stream; each is logged as a WARNING at start-up")
