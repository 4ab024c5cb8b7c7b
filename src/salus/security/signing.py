"""Salus's own signing keys: access tokens and audit checkpoints.

Keys live in the ``signing_keys`` table. The private part is a PKCS#8 PEM
sealed with :class:`~salus.storage.envelope.ValueSealer` under the context
``b"signing-key:" + kid`` (stored as is only when encryption at rest is
disabled, in development); the public part is kept as a JWK (RFC 7517 §4)
and published in the JWK Set (RFC 7517 §5) at ``/.well-known/jwks.json``.

The ``kid`` of a key is its JWK thumbprint (RFC 7638, SHA-256, base64url).

Life cycle: exactly one key is *active* (signs). :meth:`SigningKeys.rotate`
makes a new key active; the previous ones stay published, inactive, so that
tokens they signed keep verifying until :meth:`SigningKeys.retire` marks them
retired. A retired key is no longer published nor accepted for tokens; its
public part is kept forever so that old audit checkpoints still verify.

Keys are cached in memory; the table is re-read every ``cache_seconds`` (so
that a rotation or retirement done by another process is seen within that
time) and a kid not in the cache is looked up at once.

The same keys sign audit checkpoints (:meth:`SigningKeys.sign` and
:meth:`SigningKeys.verify`, the ``CheckpointSigner`` shape). Checkpoint
signatures cover ``CHECKPOINT_CONTEXT ‖ data``; the context holds a NUL byte,
which a JWS signing input (RFC 7515 §5.1: base64url and ".") never does, so a
checkpoint signature can never pass for a token signature, nor the reverse.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm, get_default_algorithms
from sqlalchemy import select, text, update
from sqlalchemy.engine import Connection, RowMapping

from salus.db.engine import Database
from salus.db.tables import signing_keys
from salus.db.types import utcnow
from salus.errors import ConfigurationError, Conflict, IntegrityError, InvalidInput, NotFound
from salus.storage.envelope import ValueSealer

__all__ = [
    "CHECKPOINT_CONTEXT",
    "SIGNING_ALGORITHMS",
    "ActiveKey",
    "PrivateKey",
    "PublicKey",
    "SigningKey",
    "SigningKeys",
    "jwk_thumbprint",
]

#: Algorithms Salus signs with (RFC 7518 §3.3 RS256, §3.4 ES256).
SIGNING_ALGORITHMS = ("ES256", "RS256")
#: RSA modulus size for new keys (NIST SP 800-57: 3072 bits beyond 2030).
RSA_BITS = 3072
#: Domain separation for audit checkpoint signatures.
CHECKPOINT_CONTEXT = b"salus-audit-checkpoint/1\x00"
#: pg_advisory_xact_lock key serialising key creation and rotation (PostgreSQL).
_LOCK_KEY = 0x5A1_0051_6E00

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

_PUBLIC_MEMBERS = {"EC": ("kty", "crv", "x", "y"), "RSA": ("kty", "n", "e")}


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url without padding)."""
    members = _PUBLIC_MEMBERS.get(str(jwk.get("kty")))
    if members is None:
        raise InvalidInput("Only EC and RSA keys are supported.")
    required = {name: jwk[name] for name in sorted(members)}
    canonical = json.dumps(required, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text_value: str) -> bytes:
    return base64.urlsafe_b64decode(text_value + "=" * (-len(text_value) % 4))


@dataclass(frozen=True, slots=True)
class SigningKey:
    """The public side of one signing key, as cached."""

    kid: str
    alg: str
    public_key: PublicKey
    #: The public JWK with kid, alg and use ("sig"), as published.
    public_jwk: dict[str, Any]
    active: bool
    created_at: datetime
    retired_at: datetime | None

    @property
    def retired(self) -> bool:
        return self.retired_at is not None


@dataclass(frozen=True, slots=True)
class ActiveKey:
    """The key that signs now: its kid, algorithm and private key."""

    kid: str
    alg: str
    private_key: PrivateKey

    def __repr__(self) -> str:  # never show key material
        return f"ActiveKey(kid={self.kid!r}, alg={self.alg!r})"


def _generate(alg: str) -> PrivateKey:
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    raise ConfigurationError("The token signing algorithm must be ES256 or RS256.")


def _public_jwk(public_key: PublicKey, alg: str) -> dict[str, Any]:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        full = ECAlgorithm.to_jwk(public_key, as_dict=True)
    else:
        full = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    jwk = {name: full[name] for name in _PUBLIC_MEMBERS[str(full["kty"])]}
    kid = jwk_thumbprint(jwk)
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


def _load_public(jwk: dict[str, Any]) -> PublicKey:
    key: Any
    try:
        if jwk.get("kty") == "EC":
            key = ECAlgorithm.from_jwk(jwk)
        elif jwk.get("kty") == "RSA":
            key = RSAAlgorithm.from_jwk(jwk)
        else:
            raise ValueError("kty")
    except Exception:
        raise IntegrityError("A stored signing key is damaged.") from None
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise IntegrityError("A stored signing key is damaged.")
    return key


_COLUMNS = (
    signing_keys.c.kid,
    signing_keys.c.alg,
    signing_keys.c.public_jwk,
    signing_keys.c.active,
    signing_keys.c.created_at,
    signing_keys.c.retired_at,
)


class SigningKeys:
    """Create, rotate, retire, publish and use the signing keys.

    Thread-safe; one instance per process is enough. ``alg`` is the algorithm
    of keys this instance creates (``SALUS_AUTH_SIGNING_ALG``); existing keys
    keep theirs.
    """

    def __init__(
        self,
        db: Database,
        sealer: ValueSealer | None,
        alg: str = "ES256",
        *,
        cache_seconds: float = 30.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if alg not in SIGNING_ALGORITHMS:
            raise ConfigurationError("The token signing algorithm must be ES256 or RS256.")
        self.db = db
        self.alg = alg
        self.cache_seconds = cache_seconds
        self.clock = clock
        self._sealer = sealer
        self._lock = threading.RLock()
        self._keys: dict[str, SigningKey] = {}
        self._private: dict[str, PrivateKey] = {}
        self._loaded_at: float | None = None

    def __repr__(self) -> str:
        return f"SigningKeys(alg={self.alg!r}, keys={sorted(self._keys)!r})"

    # -- life cycle ------------------------------------------------------------------
    def ensure_active(self) -> str:
        """The kid of the active key, creating one if there is none.

        Race-safe: creation runs under a lock held for the transaction (SQLite:
        ``BEGIN IMMEDIATE``; PostgreSQL: a transaction-scoped advisory lock),
        so two processes starting together create one key, not two.
        """
        with self.db.write() as conn:
            self._lock_table(conn)
            row = conn.execute(
                select(signing_keys.c.kid)
                .where(signing_keys.c.active.is_(True), signing_keys.c.retired_at.is_(None))
                .order_by(signing_keys.c.created_at.desc(), signing_keys.c.kid)
                .limit(1)
            ).first()
            kid = str(row.kid) if row is not None else self._create(conn)
        self.reload()
        return kid

    def rotate(self) -> str:
        """Make a new key active; the previous ones stay published, inactive.

        Returns the new kid.
        """
        with self.db.write() as conn:
            self._lock_table(conn)
            conn.execute(
                update(signing_keys).where(signing_keys.c.active.is_(True)).values(active=False)
            )
            kid = self._create(conn)
        self.reload()
        return kid

    def retire(self, kid: str) -> None:
        """Stop publishing and accepting an inactive key (after a rotation).

        The active key cannot be retired: rotate first, then wait at least the
        token lifetime plus ``cache_seconds`` (other processes may sign with
        the old key until their cache refreshes) so that no live token breaks.
        """
        with self.db.write() as conn:
            self._lock_table(conn)
            row = conn.execute(
                select(signing_keys.c.active, signing_keys.c.retired_at).where(
                    signing_keys.c.kid == kid
                )
            ).first()
            if row is None:
                raise NotFound("No signing key has this kid.")
            if row.active:
                raise Conflict("The active signing key cannot be retired; rotate first.")
            if row.retired_at is None:
                conn.execute(
                    update(signing_keys)
                    .where(signing_keys.c.kid == kid)
                    .values(retired_at=self.clock())
                )
        self.reload()

    def rewrap(self) -> int:
        """Re-wrap sealed private keys under the active master key; returns how many."""
        if self._sealer is None:
            return 0
        changed = 0
        with self.db.write() as conn:
            rows = conn.execute(select(signing_keys.c.kid, signing_keys.c.private_key)).all()
            for row in rows:
                stored = bytes(row.private_key)
                if not stored.startswith(ValueSealer.MAGIC):
                    continue
                new = self._sealer.rewrap(stored, self._context(str(row.kid)))
                if new is not None:
                    conn.execute(
                        update(signing_keys)
                        .where(signing_keys.c.kid == row.kid)
                        .values(private_key=new)
                    )
                    changed += 1
        return changed

    def _lock_table(self, conn: Connection) -> None:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})

    def _create(self, conn: Connection) -> str:
        private_key = _generate(self.alg)
        jwk = _public_jwk(private_key.public_key(), self.alg)
        kid = str(jwk["kid"])
        pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        stored = pem if self._sealer is None else self._sealer.seal(pem, self._context(kid))
        conn.execute(
            signing_keys.insert().values(
                kid=kid,
                alg=self.alg,
                private_key=stored,
                public_jwk=jwk,
                active=True,
                created_at=self.clock(),
                retired_at=None,
            )
        )
        with self._lock:
            self._private[kid] = private_key
        return kid

    @staticmethod
    def _context(kid: str) -> bytes:
        return b"signing-key:" + kid.encode()

    # -- the cache -------------------------------------------------------------------
    def reload(self) -> None:
        """Re-read the table now (metadata and public keys; private keys stay cached)."""
        with self.db.read() as conn:
            rows = conn.execute(select(*_COLUMNS)).mappings().all()
        keys = {str(row["kid"]): self._record(row) for row in rows}
        with self._lock:
            self._keys = keys
            self._loaded_at = time.monotonic()

    def _fresh(self) -> None:
        loaded = self._loaded_at
        if loaded is None or time.monotonic() - loaded >= self.cache_seconds:
            self.reload()

    def _record(self, row: RowMapping) -> SigningKey:
        kid = str(row["kid"])
        cached = self._keys.get(kid)
        jwk = dict(row["public_jwk"])
        if cached is not None and cached.public_jwk == jwk:
            public_key = cached.public_key
        else:
            public_key = _load_public(jwk)
        return SigningKey(
            kid=kid,
            alg=str(row["alg"]),
            public_key=public_key,
            public_jwk=jwk,
            active=bool(row["active"]),
            created_at=row["created_at"],
            retired_at=row["retired_at"],
        )

    def lookup(self, kid: str) -> SigningKey | None:
        """The key with this kid in any state (retired included), or None."""
        self._fresh()
        found = self._keys.get(kid)
        if found is not None:
            return found
        with self.db.read() as conn:
            query = select(*_COLUMNS).where(signing_keys.c.kid == kid)
            row = conn.execute(query).mappings().first()
        if row is None:
            return None
        record = self._record(row)
        with self._lock:
            self._keys[kid] = record
        return record

    def cached(self, kid: str) -> SigningKey | None:
        """The key with this kid if the cache is fresh and holds it; None otherwise
        (never touches the database: for fast paths that fall back to :meth:`lookup`)."""
        loaded = self._loaded_at
        if loaded is None or time.monotonic() - loaded >= self.cache_seconds:
            return None
        return self._keys.get(kid)

    def public_key(self, kid: str) -> PublicKey | None:
        """The public key for a kid, or None when unknown or retired."""
        record = self.lookup(kid)
        return None if record is None or record.retired else record.public_key

    def jwks(self) -> dict[str, Any]:
        """The JWK Set to publish (RFC 7517 §5): active and inactive, not retired keys."""
        self._fresh()
        published = sorted(
            (key for key in self._keys.values() if not key.retired),
            key=lambda k: (not k.active, -k.created_at.timestamp(), k.kid),
        )
        return {"keys": [dict(key.public_jwk) for key in published]}

    def active(self) -> ActiveKey:
        """The key that signs now (created if there is none)."""
        self._fresh()
        current = self._newest_active()
        if current is None:
            self.ensure_active()
            current = self._newest_active()
            if current is None:  # pragma: no cover - ensure_active just made one
                raise IntegrityError("No active signing key.")
        return ActiveKey(current.kid, current.alg, self._private_key(current.kid))

    def _newest_active(self) -> SigningKey | None:
        candidates = [k for k in self._keys.values() if k.active and not k.retired]
        if not candidates:
            return None
        return max(candidates, key=lambda k: (k.created_at, k.kid))

    def _private_key(self, kid: str) -> PrivateKey:
        cached = self._private.get(kid)
        if cached is not None:
            return cached
        with self.db.read() as conn:
            stored = conn.execute(
                select(signing_keys.c.private_key).where(signing_keys.c.kid == kid)
            ).scalar_one()
        pem = bytes(stored)
        if pem.startswith(ValueSealer.MAGIC):
            if self._sealer is None:
                raise ConfigurationError(
                    "The signing keys are encrypted but encryption at rest is disabled."
                )
            pem = self._sealer.open(pem, self._context(kid))
        try:
            loaded = serialization.load_pem_private_key(pem, password=None)
        except ValueError:
            raise IntegrityError("A stored signing key is damaged.") from None
        if not isinstance(loaded, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise IntegrityError("A stored signing key is damaged.")
        with self._lock:
            self._private[kid] = loaded
        return loaded

    # -- audit checkpoints (the CheckpointSigner shape) ---------------------------------
    def sign(self, data: bytes) -> tuple[str, str]:
        """Sign ``data`` with the active key: (kid, base64url signature).

        The signature is in JWS form (RFC 7518 §3.4: raw ``r ‖ s`` for ECDSA;
        RSASSA-PKCS1-v1_5 for RS256) over ``CHECKPOINT_CONTEXT ‖ data``.
        """
        key = self.active()
        algorithm = get_default_algorithms()[key.alg]
        signature = algorithm.sign(CHECKPOINT_CONTEXT + data, key.private_key)
        return key.kid, _b64url(signature)

    def verify(self, kid: str, data: bytes, signature: str) -> bool:
        """Whether ``signature`` (from :meth:`sign`) is valid for ``data`` under ``kid``.

        Retired keys still verify: retirement ends a key's use for tokens, and
        checkpoints signed before stay verifiable.
        """
        record = self.lookup(kid)
        if record is None:
            return False
        try:
            raw = _b64url_decode(signature)
        except ValueError:
            return False
        algorithm = get_default_algorithms()[record.alg]
        return bool(algorithm.verify(CHECKPOINT_CONTEXT + data, cast(Any, record.public_key), raw))
