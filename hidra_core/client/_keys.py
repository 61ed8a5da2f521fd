"""CURVE keys of an analysis client: its own key pair and the sender's public key."""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property

import zmq

from hidra_core.security.keys import load_pair, public_key

__all__ = ["ClientKeys"]


@dataclass(frozen=True)
class ClientKeys:
    """``secret_file``: the client's own ``NAME.key_secret`` (made by ``hidra keys generate NAME``);
    ``server_key``: the sender's public key (Z85, 40 characters). Its public key must be in the sender's
    ``security.allow_clients``."""

    secret_file: str
    server_key: str | bytes

    @classmethod
    def from_dir(cls, keys_dir: str, identity: str, server: str) -> ClientKeys:
        """Keys by name: ``keys_dir/identity.key_secret``, and ``server`` (a name in ``keys_dir`` or a Z85 key)."""
        keys_dir = os.path.expanduser(keys_dir)
        load_pair(keys_dir, identity)  # NOTE: a missing or bad file fails here, naming it, not at the first socket
        return cls(os.path.join(keys_dir, f"{identity}.key_secret"), public_key(keys_dir, server))

    @cached_property
    def _pair(self) -> tuple[bytes, bytes]:
        folder, name = os.path.split(self.secret_file)
        if not name.endswith(".key_secret"):
            raise ValueError(f"{self.secret_file!r} is not a NAME.key_secret file")
        return load_pair(folder or ".", name[:-len(".key_secret")])

    @property
    def public(self) -> bytes:
        return self._pair[0]

    @property
    def server(self) -> bytes:
        return self.server_key.encode() if isinstance(self.server_key, str) else self.server_key

    def client(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE client of the sender (before connect)."""
        sock.curve_publickey, sock.curve_secretkey = self._pair
        sock.curve_serverkey = self.server

    def serve(self, sock: zmq.Socket) -> None:
        """Make ``sock`` (the client's data socket, before bind) a CURVE server with the client's own key."""
        sock.curve_publickey, sock.curve_secretkey = self._pair
        sock.curve_server = True
