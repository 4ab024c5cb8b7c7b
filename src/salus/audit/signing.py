"""Signatures of audit checkpoints.

A checkpoint states "the chain had ``hash`` at ``seq`` at ``created_at``" and
is signed so that an attacker who can write to the database cannot forge
one (and so cannot hide a truncation or a rewrite behind a new checkpoint).
Signers plug in through :class:`CheckpointSigner`; :class:`Ed25519Signer`
(RFC 8032) is built in, and the access-token signing keys (ES256) can be
plugged in through the same protocol.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from salus.audit.events import canonical_json, iso_utc
from salus.errors import InvalidInput

__all__ = ["Checkpoint", "CheckpointSigner", "Ed25519Signer", "b64url", "b64url_decode"]

#: Domain separation: a checkpoint signature can never be mistaken for
#: a signature over anything else made with the same key (a JWT, say).
CHECKPOINT_TYPE = "salus.audit.checkpoint.v1"


@runtime_checkable
class CheckpointSigner(Protocol):
    """Signs checkpoint payloads and verifies signatures by key id."""

    def sign(self, data: bytes) -> tuple[str, str]:
        """Return ``(kid, signature)``, the signature in base64url without padding."""
        ...

    def verify(self, kid: str, data: bytes, signature: str) -> bool:
        """True if ``signature`` (base64url) over ``data`` is valid under ``kid``."""
        ...


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode base64url with or without padding; :class:`ValueError` if invalid."""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement of the chain head: (seq, hash) at created_at."""

    seq: int
    hash: str
    created_at: datetime
    kid: str
    signature: str

    @staticmethod
    def payload_for(seq: int, hash_: str, created_at: datetime) -> bytes:
        """The signed bytes: canonical JSON of ``{created_at, hash, seq, typ}``.

        ``typ`` is ``salus.audit.checkpoint.v1``; ``created_at`` is ISO 8601
        UTC with microseconds and ``Z`` (see :func:`salus.audit.events.iso_utc`).
        """
        return canonical_json(
            {"created_at": iso_utc(created_at), "hash": hash_, "seq": seq, "typ": CHECKPOINT_TYPE}
        )

    def payload(self) -> bytes:
        return self.payload_for(self.seq, self.hash, self.created_at)

    def verify(self, signer: CheckpointSigner) -> bool:
        try:
            return signer.verify(self.kid, self.payload(), self.signature)
        except Exception:  # a signer that fails to verify: not valid
            return False

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "hash": self.hash,
            "created_at": iso_utc(self.created_at),
            "kid": self.kid,
            "signature": self.signature,
        }

    def to_line(self) -> str:
        """One line of the checkpoint file (canonical JSON and a newline)."""
        return canonical_json(self.to_dict()).decode("utf-8") + "\n"

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Checkpoint:
        """Parse a checkpoint file entry (or row); :class:`InvalidInput` if malformed."""
        try:
            seq = values["seq"]
            hash_ = values["hash"]
            created = values["created_at"]
            kid = values["kid"]
            signature = values["signature"]
            if isinstance(created, str):
                created = datetime.fromisoformat(created)
            valid = (
                isinstance(seq, int)
                and not isinstance(seq, bool)
                and isinstance(hash_, str)
                and isinstance(kid, str)
                and isinstance(signature, str)
                and isinstance(created, datetime)
                and created.tzinfo is not None
            )
        except (KeyError, TypeError, ValueError):
            valid = False
        if not valid:
            raise InvalidInput("Malformed audit checkpoint.")
        return cls(seq=seq, hash=hash_, created_at=created, kid=kid, signature=signature)


class Ed25519Signer:
    """An Ed25519 checkpoint signer (RFC 8032), with optional extra trusted keys.

    ``trusted`` maps key ids to public keys of earlier (rotated) signers whose
    checkpoints must still verify.
    """

    def __init__(
        self,
        private_key: Ed25519PrivateKey,
        *,
        kid: str | None = None,
        trusted: Mapping[str, Ed25519PublicKey] | None = None,
    ) -> None:
        self._private = private_key
        self.public_key = private_key.public_key()
        self.kid = kid or self.key_id(self.public_key)
        if not self.kid or len(self.kid) > 64:
            raise InvalidInput("A checkpoint key id must be 1 to 64 characters.")
        self._trusted: dict[str, Ed25519PublicKey] = dict(trusted or {})
        self._trusted[self.kid] = self.public_key

    @classmethod
    def generate(cls, kid: str | None = None) -> Ed25519Signer:
        return cls(Ed25519PrivateKey.generate(), kid=kid)

    @staticmethod
    def key_id(public_key: Ed25519PublicKey) -> str:
        """``ed25519-`` and 22 base64url characters of SHA-256(raw public key)."""
        raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        return "ed25519-" + b64url(hashlib.sha256(raw).digest())[:22]

    def sign(self, data: bytes) -> tuple[str, str]:
        return self.kid, b64url(self._private.sign(data))

    def verify(self, kid: str, data: bytes, signature: str) -> bool:
        key = self._trusted.get(kid)
        if key is None:
            return False
        try:
            key.verify(b64url_decode(signature), data)
        except (InvalidSignature, ValueError):
            return False
        return True
