"""Access-token issue and verification cost, with the database lookups verify does.

Contenders, each timed call by call:

* ``issue``: :meth:`TokenService.issue` for a user (claims, scopes from the
  roles, signing with the cached active key: ES256 or RS256-3072).
* ``verify``: :meth:`TokenService.verify` of tokens issued beforehand: header
  and algorithm checks, the key looked up by kid (cached), the signature, the
  claims, then the read transaction that checks the user and organization are
  still active (SQLite, WAL, in a temporary folder).
* ``verify, signature only``: ``jwt.decode`` with the same key and checks but
  no database: what the lookups add is the difference.
* ``client assertion``: :meth:`TokenService.authenticate_client_assertion`
  (RFC 7523, ES384), which reads the client, verifies the signature and
  *writes* the jti (a durable SQLite commit, ``synchronous=FULL``).
* ``client secret``: :meth:`TokenService.authenticate_client_secret`
  (Argon2id, m=19 MiB, t=2, p=1).

Contenders alternate in blocks, in an order rotated every round, so that drift
hits all alike. Reported: median, p95 and mean microseconds per call and the
calls per second the median implies, on one thread.

Run from the repository root in the project's virtualenv (about a minute)::

    python bench/token_bench.py [--iterations 2000] [--rounds 10]
                                [--slow-iterations 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cryptography
import jwt
from cryptography.hazmat.backends.openssl import backend as openssl_backend
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from salus.db import create_database, migrate
from salus.db.tables import clients, organizations, users
from salus.db.types import utcnow
from salus.security.principal import AuthMethod, Principal, PrincipalKind
from salus.security.signing import SigningKeys
from salus.security.tokens import TokenService, hash_secret
from salus.storage.envelope import ValueSealer
from salus.storage.keys import FileKeyProvider

ISSUER = "https://salus.bench"
TOKEN_URL = f"{ISSUER}/auth/token"
SECRET = "bench-client-secret-0123456789abcdef"  # noqa: S105 - a throwaway test value
USER = Principal(
    kind=PrincipalKind.USER,
    id="u-1",
    org_id="org-a",
    roles=frozenset({"clinician"}),
    auth_method=AuthMethod.PASSWORD_TOTP,
)
CLIENT_KEY = ec.generate_private_key(ec.SECP384R1())


def seed(db: Any) -> None:
    now = utcnow()
    jwk = {**ECAlgorithm.to_jwk(CLIENT_KEY.public_key(), as_dict=True), "kid": "ck", "alg": "ES384"}
    with db.write() as conn:
        conn.execute(
            organizations.insert().values(
                id="org-a", name="A", kind="hospital", active=True, created_at=now
            )
        )
        conn.execute(
            users.insert().values(
                id="u-1",
                username="alice",
                org_id="org-a",
                display_name="Alice",
                password_hash="-",  # noqa: S106
                active=True,
                created_at=now,
            )
        )
        conn.execute(
            clients.insert(),
            [
                {
                    "id": "c-jwt",
                    "org_id": "org-a",
                    "name": "EHR",
                    "auth_method": "private_key_jwt",
                    "jwks": {"keys": [jwk]},
                    "secret_hash": None,
                    "active": True,
                    "created_at": now,
                },
                {
                    "id": "c-sec",
                    "org_id": "org-a",
                    "name": "Lab",
                    "auth_method": "client_secret",
                    "jwks": None,
                    "secret_hash": hash_secret(SECRET),
                    "active": True,
                    "created_at": now,
                },
            ],
        )


def assertion() -> str:
    now = int(time.time())
    claims = {
        "iss": "c-jwt",
        "sub": "c-jwt",
        "aud": TOKEN_URL,
        "iat": now,
        "exp": now + 240,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, CLIENT_KEY, algorithm="ES384", headers={"kid": "ck"})


@dataclass(frozen=True)
class Contender:
    call: Callable[[Any], object]
    #: Makes the call's argument, untimed (the client's side of a request).
    prepare: Callable[[], Any] = lambda: None
    slow: bool = False


def build(work: Path) -> dict[str, Contender]:
    sealer = ValueSealer(FileKeyProvider.create(work / "keys" / "master-keys.json"))
    contenders: dict[str, Contender] = {}
    for alg in ("ES256", "RS256"):  # one database each: each has one active key
        db = create_database(f"sqlite:///{work / alg / 'salus.db'}")
        migrate(db)
        seed(db)
        keys = SigningKeys(db, sealer, alg)
        keys.ensure_active()
        service = TokenService(db, keys, issuer=ISSUER, audience=ISSUER, ttl=3600)
        token = service.issue(USER).access_token
        public = keys.public_key(jwt.get_unverified_header(token)["kid"])

        def signature_only(
            _: Any, token: str = token, public: Any = public, alg: str = alg
        ) -> object:
            return jwt.decode(
                token,
                public,
                algorithms=[alg],
                audience=ISSUER,
                issuer=ISSUER,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )

        contenders[f"issue ({alg})"] = Contender(lambda _, s=service: s.issue(USER))
        contenders[f"verify ({alg})"] = Contender(lambda _, s=service, t=token: s.verify(t))
        contenders[f"verify, signature only ({alg})"] = Contender(signature_only)
    service = TokenService(db, SigningKeys(db, sealer), issuer=ISSUER, audience=ISSUER, ttl=60)
    contenders["client assertion (ES384, jti write)"] = Contender(
        lambda made: service.authenticate_client_assertion(made, token_endpoint_url=TOKEN_URL),
        prepare=assertion,
        slow=True,
    )
    contenders["client secret (argon2id)"] = Contender(
        lambda _: service.authenticate_client_secret("c-sec", SECRET), slow=True
    )
    return contenders


def run(
    contenders: dict[str, Contender], iterations: int, slow_iterations: int, rounds: int
) -> dict[str, list[float]]:
    names = list(contenders)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for contender in contenders.values():  # warm-up: caches, key loading, statements
        for _ in range(5 if contender.slow else 50):
            contender.call(contender.prepare())
    clock = time.perf_counter_ns
    for round_no in range(rounds):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            contender = contenders[name]
            block = (slow_iterations if contender.slow else iterations) // rounds
            for _ in range(block):
                argument = contender.prepare()
                start = clock()
                contender.call(argument)
                samples[name].append((clock() - start) / 1000)
    return samples


def summarise(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name, values in samples.items():
        ordered = sorted(values)
        median = statistics.median(ordered)
        out[name] = {
            "n": len(ordered),
            "median_us": median,
            "p95_us": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
            "mean_us": statistics.fmean(ordered),
            "per_second": 1e6 / median,
        }
    return out


def markdown(results: dict[str, dict[str, float]]) -> str:
    lines = [
        "| operation | calls | median µs | p95 µs | mean µs | calls/s (median) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {int(r['n'])} | {r['median_us']:.0f} | {r['p95_us']:.0f} | "
            f"{r['mean_us']:.0f} | {r['per_second']:.0f} |"
        )
    return "\n".join(lines)


def machine() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "pyjwt": jwt.__version__,
        "cryptography": cryptography.__version__,
        "openssl": openssl_backend.openssl_version_text(),
        "cpus": str(os.cpu_count()),
        "platform": platform.platform(),
        "taken": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=2000, help="calls per fast contender")
    parser.add_argument(
        "--slow-iterations",
        type=int,
        default=200,
        help="calls per slow contender (client authentication)",
    )
    parser.add_argument("--rounds", type=int, default=10, help="blocks per contender")
    parser.add_argument("--dir", type=Path, default=None, help="folder for the temporary database")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        contenders = build(Path(tmp))
        results = summarise(run(contenders, args.iterations, args.slow_iterations, args.rounds))
    info = machine()
    print(", ".join(f"{k} {v}" for k, v in info.items()), file=sys.stderr)
    print(markdown(results))
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": info, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
