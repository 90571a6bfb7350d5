"""The shared pool key and the challenge-response that proves it without sending it.

`edgepool pool up` creates the key once (32 random bytes, hex, in a file only its owner may read); every agent
and client is given the same key (`--key`, `EDGEPOOL_POOL_KEY` or `--key-file`). Both ends of a connection
prove they hold it with HMAC-SHA256 over two fresh nonces, one from each side, so a recorded exchange cannot be
replayed and an agent never joins an impostor coordinator. The key authenticates; it does not encrypt the
traffic that follows (run the pool on a network you trust, or inside a VPN).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from edgepool.errors import SpecError

KEY_ENV = "EDGEPOOL_POOL_KEY"
KEY_FILE_ENV = "EDGEPOOL_POOL_KEY_FILE"
KEY_BYTES = 32


def default_key_path() -> Path:
    """$EDGEPOOL_POOL_KEY_FILE, else $XDG_CONFIG_HOME/edgepool/pool.key (~/.config/edgepool/pool.key)."""
    if os.environ.get(KEY_FILE_ENV):
        return Path(os.environ[KEY_FILE_ENV])
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "edgepool" / "pool.key"


def create_key(path: str | Path | None = None) -> tuple[bytes, Path, bool]:
    """The key at `path`, created when missing: (key, path, created). The file is made 0600 from the start
    (never world-readable, not even for a moment) and written whole or not at all."""
    path = Path(path) if path else default_key_path()
    if path.exists():
        return load_key_file(path), path, False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = secrets.token_hex(KEY_BYTES)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
        os.link(tmp, path)  # fails if another process created the key meanwhile: then use theirs
    except FileExistsError:
        return load_key_file(path), path, False
    finally:
        tmp.unlink(missing_ok=True)
    return parse_key(text, "key file"), path, True


def load_key_file(path: str | Path) -> bytes:
    """The key in `path`; refused when others may read the file (as ssh refuses such a private key)."""
    path = Path(path)
    if not path.exists():
        raise SpecError(field="--key-file", value=str(path), accepted="an existing pool key file",
                        hint="`edgepool pool up` creates one; copy it, or pass the key with --key or "
                             f"${KEY_ENV}")
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SpecError(field="--key-file", value=str(path), accepted="a file only its owner can read (chmod 600)",
                        hint=f"its mode is {stat.filemode(mode)}")
    return parse_key(path.read_text().strip(), "--key-file")


def parse_key(text: str, field: str = "--key") -> bytes:
    """A key as the user types it: 64 hex digits."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise SpecError(field=field, value=_masked(text), accepted=f"{2 * KEY_BYTES} hex digits (the pool key "
                        "that `edgepool pool up` printed or stored)")
    return key


def resolve_key(key: str | None = None, key_file: str | Path | None = None) -> bytes:
    """The key from `--key`, else $EDGEPOOL_POOL_KEY, else the key file (`--key-file` or the default path)."""
    if key:
        return parse_key(key)
    if os.environ.get(KEY_ENV):
        return parse_key(os.environ[KEY_ENV], f"${KEY_ENV}")
    return load_key_file(key_file or default_key_path())


def nonce() -> str:
    return secrets.token_hex(16)


def proof(key: bytes, role: str, mine: str, theirs: str) -> str:
    """HMAC-SHA256 of the role and both nonces: the answer to a challenge, bound to this one exchange."""
    return hmac.new(key, f"{role}|{theirs}|{mine}".encode(), hashlib.sha256).hexdigest()


def verify(key: bytes, role: str, mine: str, theirs: str, answer: str) -> bool:
    """Did the other side, playing `role`, answer with the key? (constant-time comparison)"""
    return hmac.compare_digest(proof(key, role, theirs, mine), str(answer))


def fingerprint(key: bytes) -> str:
    """A short public name for a key (to compare two machines' keys without showing them)."""
    return hashlib.sha256(b"edgepool-fingerprint|" + key).hexdigest()[:12]


def _masked(text: str) -> str:
    text = text.strip()
    return f"{text[:4]}... ({len(text)} characters)" if len(text) > 8 else f"({len(text)} characters)"
