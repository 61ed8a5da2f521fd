"""CURVE key pairs in files: ``NAME.key`` (public) and ``NAME.key_secret`` (secret, mode 0600), in the format of
``zmq.auth.create_certificates`` so that ``zmq.auth.load_certificate`` reads them; and key references in config
(a name in the keys directory, or a 40-character Z85 public key)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

__all__ = ["KeyProblem", "KeyInfo", "default_keys_dir", "generate", "list_keys", "load_pair", "public_key"]

_NAME = re.compile(r"^(?!.{40}$)[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")  # 40 characters: a Z85 key
_Z85 = re.compile(r"^[0-9A-Za-z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")


class KeyProblem(ValueError):
    """A key file that is missing or unreadable, a bad Z85 key, or a bad key name; the message names it."""


@dataclass(frozen=True)
class KeyInfo:
    name: str
    public: str  # Z85, or "" when the public file cannot be read
    has_secret: bool


def default_keys_dir() -> str:
    """``$HIDRA_KEYS_DIR``, else ``~/.config/hidra/keys``."""
    return os.environ.get("HIDRA_KEYS_DIR") or os.path.expanduser("~/.config/hidra/keys")


def _paths(keys_dir: str, name: str) -> tuple[Path, Path]:
    if not _NAME.match(name):
        raise KeyProblem(f"key name {name!r}: use letters, digits, '.', '_' and '-' only")
    base = Path(os.path.expanduser(keys_dir)) / name
    return base.with_name(name + ".key"), base.with_name(name + ".key_secret")


def generate(keys_dir: str, name: str, force: bool = False) -> tuple[Path, Path]:
    """Write a new pair NAME.key / NAME.key_secret; refuses to replace an existing file unless ``force``."""
    public, secret = _paths(keys_dir, name)
    for path in (public, secret):
        if path.exists() and not force:
            raise KeyProblem(f"{path} exists: not overwritten (use --force to replace the key pair)")
    public.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    old = os.umask(0o077)  # NOTE: the secret never exists with wider permissions, not even for an instant
    try:
        for path in (public, secret):
            path.unlink(missing_ok=True)
        zmq.auth.create_certificates(str(public.parent), name)
    finally:
        os.umask(old)
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)
    return public, secret


def list_keys(keys_dir: str) -> list[KeyInfo]:
    """Every NAME.key (and secret-only NAME.key_secret) in ``keys_dir``, sorted by name."""
    folder = Path(os.path.expanduser(keys_dir))
    if not folder.is_dir():
        raise KeyProblem(f"keys directory {folder} does not exist (hidra keys generate NAME --dir {folder})")
    names = sorted({p.name.rsplit(".", 1)[0] for p in folder.iterdir() if p.suffix in (".key", ".key_secret")})
    out = []
    for name in names:
        public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
        try:
            z85 = _load(public if public.exists() else secret)[0].decode()
        except KeyProblem:
            z85 = ""
        out.append(KeyInfo(name, z85, secret.exists()))
    return out


def _load(path: Path) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise KeyProblem(f"key file {path} does not exist")
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise KeyProblem(f"key file {path} cannot be read: {exc}") from None
    if public is None or not _Z85.match(public.decode(errors="replace")):
        raise KeyProblem(f"key file {path} holds no valid Z85 public key")
    return public, secret


def load_pair(keys_dir: str, name: str) -> tuple[bytes, bytes]:
    """(public, secret) Z85 of NAME in ``keys_dir``, from NAME.key_secret."""
    path = _paths(keys_dir, name)[1]
    public, secret = _load(path)
    if secret is None or not _Z85.match(secret.decode(errors="replace")):
        raise KeyProblem(f"key file {path} holds no valid Z85 secret key")
    return public, secret


def public_key(keys_dir: str, ref: str) -> bytes:
    """A public key (Z85) from ``ref``: a 40-character Z85 key itself, or a key name in ``keys_dir``."""
    if len(ref) == 40:  # NOTE: key names are never 40 characters long: that length is always a key
        if not _is_z85(ref):
            raise KeyProblem(f"{ref!r} is not a valid Z85 key (40 characters of the Z85 alphabet)")
        return ref.encode()
    public, secret = _paths(keys_dir, ref)
    return _load(public if public.exists() or not secret.exists() else secret)[0]


def _is_z85(text: str) -> bool:
    if not _Z85.match(text):
        return False
    try:
        return len(zmq.utils.z85.decode(text)) == 32
    except (ValueError, KeyError):
        return False
