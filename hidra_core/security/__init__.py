"""CURVE encryption and authentication for every ZeroMQ socket: key files, the ``security`` config section, the
one ZAP handler per process with a domain per role, and a helper that secures a plugin's socket."""
from __future__ import annotations

from hidra_core.security.auth import DOMAINS, Security, active, secure_socket
from hidra_core.security.config import PLAIN_NAMES, SecurityConfig
from hidra_core.security.keys import KeyInfo, KeyProblem, default_keys_dir, generate, list_keys, load_pair, public_key

__all__ = ["DOMAINS", "PLAIN_NAMES", "KeyInfo", "KeyProblem", "Security", "SecurityConfig", "active",
           "default_keys_dir", "generate", "list_keys", "load_pair", "public_key", "secure_socket"]
