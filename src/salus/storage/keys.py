"""Master keys: the key-provider interface and the key-file provider.

Envelope encryption (see :mod:`salus.storage.envelope`): each object has its
own data key, and a *key provider* wraps data keys under a master key that
never leaves the provider. An external KMS (a cloud KMS, an HSM, Vault's
transit engine) implements the same three calls; the key file is the
embedded default.

The key file (``salus init`` creates it, mode 0600) is a JSON keyring::

    {"format": "salus-keyring/1", "active": "mk-…",
     "keys": [{"id": "mk-…", "created": "…", "material": "<base64, 32 bytes>"}]}

Rotation adds a key and makes it active; older keys stay so that data
sealed under them remains readable until re-wrapped. The file is replaced
atomically; a running server notices the change within a second.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from salus.errors import ConfigurationError, IntegrityError

__all__ = ["FileKeyProvider", "KeyProvider", "UnknownKey"]

KEYRING_FORMAT = "salus-keyring/1"
_NONCE = 12


class UnknownKey(IntegrityError):
    code = "unknown-key"

    @classmethod
    def default_message(cls) -> str:
        return "Data was sealed under a master key this server does not have."


class KeyProvider(Protocol):
    """Wraps and unwraps data keys under master keys it keeps to itself."""

    def active_key_id(self) -> str: ...

    def key_ids(self) -> list[str]: ...

    def wrap(self, data_key: bytes, context: bytes) -> tuple[str, bytes]:
        """Wrap under the active master key; returns (key id, wrapped key).

        ``context`` is authenticated: unwrapping with another context fails.
        """
        ...

    def unwrap(self, key_id: str, wrapped: bytes, context: bytes) -> bytes:
        """Raises :class:`IntegrityError` if the wrapped key or context is wrong."""
        ...


def _new_key_id() -> str:
    return "mk-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class FileKeyProvider:
    """Master keys in a local key file (the embedded default)."""

    RELOAD_INTERVAL = 1.0

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._keys: dict[str, AESGCM] = {}
        self._active = ""
        self._mtime_ns = -1
        self._checked = 0.0
        self._load()

    # -- file handling ---------------------------------------------------------------
    @classmethod
    def create(cls, path: Path) -> FileKeyProvider:
        """Create a new key file with one master key; refuses to overwrite one."""
        if path.exists():
            raise ConfigurationError(f"Key file {path} already exists; not overwriting it.")
        key_id = _new_key_id()
        _write_atomic(path, cls._render(key_id, [cls._new_entry(key_id)]))
        return cls(path)

    @staticmethod
    def _new_entry(key_id: str) -> dict[str, str]:
        return {
            "id": key_id,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "material": base64.b64encode(AESGCM.generate_key(bit_length=256)).decode(),
        }

    @staticmethod
    def _render(active: str, entries: list[dict[str, str]]) -> bytes:
        doc = {"format": KEYRING_FORMAT, "active": active, "keys": entries}
        return json.dumps(doc, indent=2).encode() + b"\n"

    def _read_doc(self) -> dict[str, object]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            raise ConfigurationError(
                f"Key file {self.path} not found; run 'salus init' to create one."
            ) from None
        if st.st_mode & 0o077:
            raise ConfigurationError(
                f"Key file {self.path} is readable by others; make it mode 0600."
            )
        try:
            doc = json.loads(self.path.read_bytes())
        except ValueError:
            raise ConfigurationError(f"Key file {self.path} is not valid JSON.") from None
        if not isinstance(doc, dict) or doc.get("format") != KEYRING_FORMAT:
            raise ConfigurationError(f"Key file {self.path} is not a Salus keyring.")
        return doc

    def _load(self) -> None:
        mtime = self.path.stat().st_mtime_ns if self.path.exists() else -1
        doc = self._read_doc()
        keys: dict[str, AESGCM] = {}
        entries = doc.get("keys")
        if not isinstance(entries, list) or not entries:
            raise ConfigurationError(f"Key file {self.path} holds no keys.")
        for entry in entries:
            material = base64.b64decode(entry["material"])
            if len(material) != 32:
                raise ConfigurationError(f"Key {entry['id']} in {self.path} is not 256 bits.")
            keys[str(entry["id"])] = AESGCM(material)
        active = str(doc.get("active"))
        if active not in keys:
            raise ConfigurationError(f"Key file {self.path} names an active key it lacks.")
        self._keys, self._active, self._mtime_ns = keys, active, mtime
        self._checked = time.monotonic()

    def _maybe_reload(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < self.RELOAD_INTERVAL:
            return
        with self._lock:
            self._checked = now
            try:
                mtime = self.path.stat().st_mtime_ns
            except FileNotFoundError:
                return  # keep the keys we have; readiness reports the missing file
            if mtime != self._mtime_ns:
                self._load()

    def rotate(self) -> str:
        """Add a new master key, make it active; returns its id."""
        with self._lock:
            doc = self._read_doc()
            entries = list(doc["keys"])  # type: ignore[call-overload]
            key_id = _new_key_id()
            while any(e["id"] == key_id for e in entries):
                key_id = _new_key_id()
            entries.append(self._new_entry(key_id))
            _write_atomic(self.path, self._render(key_id, entries))
            self._load()
        return key_id

    # -- KeyProvider -----------------------------------------------------------------
    def active_key_id(self) -> str:
        self._maybe_reload()
        return self._active

    def key_ids(self) -> list[str]:
        self._maybe_reload()
        return list(self._keys)

    def wrap(self, data_key: bytes, context: bytes) -> tuple[str, bytes]:
        self._maybe_reload()
        key_id = self._active
        nonce = os.urandom(_NONCE)
        wrapped = self._keys[key_id].encrypt(nonce, data_key, key_id.encode() + b"\0" + context)
        return key_id, nonce + wrapped

    def unwrap(self, key_id: str, wrapped: bytes, context: bytes) -> bytes:
        key = self._keys.get(key_id)
        if key is None:
            self._maybe_reload(force=True)
            key = self._keys.get(key_id)
            if key is None:
                raise UnknownKey()
        try:
            return key.decrypt(
                wrapped[:_NONCE], wrapped[_NONCE:], key_id.encode() + b"\0" + context
            )
        except (InvalidTag, ValueError):
            raise IntegrityError("A data key failed its integrity check.") from None
