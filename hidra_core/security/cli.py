"""``hidra keys generate NAME`` and ``hidra keys list``: CURVE key pairs in files."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from hidra_core.security.keys import KeyProblem, default_keys_dir, generate, list_keys

__all__ = ["add_keys_command", "up_overrides"]

log = logging.getLogger(__name__)

#: where ``hidra up --curve`` keeps its throwaway keys, next to hidra-data/source and hidra-data/target
UP_KEYS_DIR = "hidra-data/keys"

EPILOG = """
example:
  hidra keys generate sender --dir /etc/hidra/keys     # sender.key (public) and sender.key_secret (mode 0600)
  hidra keys list --dir /etc/hidra/keys                # name, Z85 public key, whether the secret is there"""


def add_keys_command(subs: Any) -> None:
    keys = subs.add_parser("keys", help="make and list CURVE key pairs (security.curve)",
                           description="make and list CURVE key pairs (security.curve)", epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    ksubs = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    gen = ksubs.add_parser("generate", help="write DIR/NAME.key and DIR/NAME.key_secret (0600)")
    gen.add_argument("name", metavar="NAME")
    gen.add_argument("--force", action="store_true", help="replace an existing key pair")
    lst = ksubs.add_parser("list", help="one line per key: name, Z85 public key, whether the secret is there")
    for parser in (gen, lst):
        parser.add_argument("--dir", metavar="DIR", default=None,
                            help="keys directory (default: $HIDRA_KEYS_DIR, else ~/.config/hidra/keys)")
    gen.set_defaults(func=_generate)
    lst.set_defaults(func=_list)


def _generate(args: argparse.Namespace) -> int:
    try:
        public, secret = generate(args.dir or default_keys_dir(), args.name, force=args.force)
    except KeyProblem as exc:
        print(f"hidra: error: {exc}", file=sys.stderr)
        return 1
    print(f"{public}\n{secret}")
    return 0


def _list(args: argparse.Namespace) -> int:
    try:
        found = list_keys(args.dir or default_keys_dir())
    except KeyProblem as exc:
        print(f"hidra: error: {exc}", file=sys.stderr)
        return 1
    for key in found:
        print(f"{key.name}\t{key.public or '(unreadable)'}\t{'secret' if key.has_secret else 'public only'}")
    return 0


def up_overrides(keys_dir: str = UP_KEYS_DIR) -> list[str]:
    """``hidra up --curve``: key pairs sender, receiver and client in ``keys_dir`` (made once, kept), and the
    overrides that turn CURVE on with them."""
    keys_dir = os.path.abspath(keys_dir)
    for name in ("sender", "receiver", "client"):
        if not os.path.exists(os.path.join(keys_dir, f"{name}.key_secret")):
            generate(keys_dir, name)
    log.info("hidra up --curve: CURVE on with the keys in %s; an analysis client uses"
             " ClientKeys.from_dir(%r, 'client', 'sender')", keys_dir, keys_dir)
    return ["security.curve=true", f"security.keys_dir={json.dumps(keys_dir)}", "security.identity=null",
            "security.storage_key=receiver", "security.allow_senders=[sender]", "security.allow_clients=[client]"]
