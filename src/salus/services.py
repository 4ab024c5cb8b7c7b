"""The services of one Salus process, built once from :class:`Settings`.

Everything a protocol edge needs (database, blob store, key provider, job
queue) hangs off :class:`Services`, which is built at start-up and passed
down; nothing is a module-level global. Non-HTTP listeners (DICOM, MLLP)
register here and are started and stopped by the server's lifespan.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Protocol

from salus.audit.chain import AuditLog
from salus.config import Settings
from salus.db import Database, create_database, migrate
from salus.db.migrate import current_revision, head_revision
from salus.errors import ConfigurationError, Unavailable
from salus.fhir.indexing import Indexer
from salus.fhir.router import FhirRouter
from salus.fhir.store import FhirStore
from salus.jobs import JobQueue, JobRegistry
from salus.security.care import CareService
from salus.security.directory import Directory
from salus.security.edges import EdgeAuthenticator
from salus.security.orgcache import OrgKinds
from salus.security.policy import PolicyEngine
from salus.security.ratelimit import RateLimiter
from salus.security.signin import LoginPolicy, SignIn
from salus.security.signing import SigningKeys
from salus.security.tokens import OidcConfig, TokenService
from salus.storage.blobstore import BlobStore, RewrapReport
from salus.storage.envelope import ValueSealer
from salus.storage.keys import FileKeyProvider, KeyProvider
from salus.storage.objects import FileObjectStore, ObjectStore

if TYPE_CHECKING:
    from salus.dicom.archive import DicomArchive
    from salus.hl7.runtime import Hl7Runtime
    from salus.warehouse.service import Warehouse

__all__ = ["Listener", "Rewrapper", "Services", "build_key_provider", "build_object_store"]

log = logging.getLogger("salus.services")


class Listener(Protocol):
    """A non-HTTP endpoint (DIMSE, MLLP) run inside the ``salus serve`` process."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Rewrapper:
    """Something holding wrapped data keys that ``salus keys rotate`` re-wraps."""

    name: str
    rewrap: Callable[[Callable[[int], None] | None], RewrapReport]


def _counted(
    rewrap: Callable[[], int],
) -> Callable[[Callable[[int], None] | None], RewrapReport]:
    """Adapt a re-wrapper that returns a count to the progress-reporting shape."""

    def run(progress: Callable[[int], None] | None) -> RewrapReport:
        done = rewrap()
        if progress is not None:
            progress(done)
        return RewrapReport(done, done)

    return run


def build_fhir_store(sealer: ValueSealer | None, audit: AuditLog) -> FhirStore:
    from salus.fhir.outcome import validate_or_raise
    from salus.fhir.search.extract import patient_compartment

    return FhirStore(
        sealer, audit, Indexer(), validator=validate_or_raise, compartment=patient_compartment
    )


def build_fhir_router(
    settings: Settings, db: Database, store: FhirStore, policy: PolicyEngine
) -> FhirRouter:
    from salus.fhir.capabilities import capability_statement
    from salus.fhir.deidview import Pseudonymizer
    from salus.fhir.query import type_lookup
    from salus.fhir.search.registry import get_registry
    from salus.fhir.searching import Searcher

    registry = get_registry()
    return FhirRouter(
        db,
        store,
        policy,
        searcher=Searcher(store, type_lookup(registry.params_for)),
        pseudonymizer=Pseudonymizer(settings.secret_key.get_secret_value().encode()),
        capabilities=lambda: capability_statement(registry, settings.base_url()),
    )


def build_object_store(settings: Settings) -> ObjectStore:
    if settings.blob_backend == "s3":
        from salus.storage.s3 import S3ObjectStore

        if not settings.s3_bucket:
            raise ConfigurationError("SALUS_S3_BUCKET is required for the S3 blob backend.")
        return S3ObjectStore(
            settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=(
                settings.s3_access_key_id.get_secret_value() if settings.s3_access_key_id else None
            ),
            secret_access_key=(
                settings.s3_secret_access_key.get_secret_value()
                if settings.s3_secret_access_key
                else None
            ),
        )
    return FileObjectStore(settings.blob_path(), fsync=settings.blob_fsync)


def build_key_provider(settings: Settings) -> FileKeyProvider | None:
    if not settings.encryption_enabled:
        return None
    return FileKeyProvider(settings.key_path())


@dataclass
class Services:
    settings: Settings
    db: Database
    blobs: BlobStore
    keys: KeyProvider | None
    jobs: JobQueue
    audit: AuditLog
    signing_keys: SigningKeys
    tokens: TokenService
    directory: Directory
    signin: SignIn
    care: CareService
    policy: PolicyEngine
    org_kinds: OrgKinds
    edges: EdgeAuthenticator
    token_rate: RateLimiter
    login_rate: RateLimiter
    fhir_store: FhirStore
    fhir_router: FhirRouter
    job_handlers: JobRegistry = field(default_factory=JobRegistry)
    listeners: list[Listener] = field(default_factory=list)
    rewrappers: list[Rewrapper] = field(default_factory=list)
    dicom: DicomArchive | None = None
    hl7: Hl7Runtime | None = None
    warehouse: Warehouse | None = None

    @classmethod
    def build(cls, settings: Settings, *, run_migrations: bool | None = None) -> Services:
        settings.check_safe()
        db = create_database(
            settings.database_url_value(),
            pool_size=settings.database_pool_size,
            sqlite_cache_mb=settings.database_sqlite_cache_mb,
            sqlite_wal_limit_mb=settings.database_sqlite_wal_limit_mb,
            sqlite_wal_restart_mb=settings.database_sqlite_wal_restart_mb,
        )
        try:
            if settings.migrate_on_start if run_migrations is None else run_migrations:
                migrate(db)
            keys = build_key_provider(settings)
            blobs = BlobStore(build_object_store(settings), keys)
        except BaseException:
            db.dispose()
            raise
        jobs = JobQueue(
            db,
            max_attempts=settings.jobs_max_attempts,
            backoff_base=settings.jobs_backoff_base,
            backoff_max=settings.jobs_backoff_max,
            lease_seconds=settings.jobs_lease_seconds,
        )
        sealer = ValueSealer(keys) if keys is not None else None
        signing_keys = SigningKeys(db, sealer, settings.auth_signing_alg)
        audit = AuditLog(
            db,
            signer=signing_keys,
            checkpoint_file=settings.audit_checkpoint_path(),
            append_lock=settings.audit_checkpoint_path().parent / "append.lock",  # FHIR reads
        )
        tokens = TokenService(
            db,
            signing_keys,
            issuer=settings.base_url(),
            audience=settings.base_url(),
            ttl=settings.auth_token_ttl,
            oidc=OidcConfig.from_settings(settings),
            active_cache_seconds=5.0,
        )
        directory = Directory(db, audit, sealer)
        directory.on_change = tokens.forget_accounts
        signin = SignIn(
            directory,
            login_policy=LoginPolicy(
                max_failures=settings.login_max_failures,
                lockout=timedelta(seconds=settings.login_lockout_seconds),
            ),
        )
        org_kinds = OrgKinds(db)
        policy = PolicyEngine(org_kinds.kind)
        fhir_store = build_fhir_store(sealer, audit)
        services = cls(
            settings=settings,
            db=db,
            blobs=blobs,
            keys=keys,
            jobs=jobs,
            audit=audit,
            signing_keys=signing_keys,
            tokens=tokens,
            directory=directory,
            signin=signin,
            care=CareService(db, audit, btg_minutes=settings.break_glass_minutes),
            policy=policy,
            org_kinds=org_kinds,
            edges=EdgeAuthenticator(db, directory),
            token_rate=RateLimiter(settings.rate_limit_token_per_minute),
            login_rate=RateLimiter(settings.rate_limit_login_per_minute),
            fhir_store=fhir_store,
            fhir_router=build_fhir_router(settings, db, fhir_store, policy),
        )
        from salus.fhir.bulk import register_bulk_jobs

        register_bulk_jobs(services)
        from salus import dicom, hl7

        dicom.install(services)
        hl7.install(services)
        from salus import warehouse

        warehouse.install(services)
        services.rewrappers.append(Rewrapper("blobs", blobs.rewrap))
        services.rewrappers.append(Rewrapper("signing keys", _counted(signing_keys.rewrap)))
        services.rewrappers.append(Rewrapper("second factors", _counted(signin.rewrap_totp)))
        return services

    def value_sealer(self) -> ValueSealer | None:
        return ValueSealer(self.keys) if self.keys is not None else None

    def readiness(self) -> dict[str, str]:
        """Check every dependency; maps check name to "ok" or a safe reason."""
        checks: dict[str, str] = {}
        for name, probe in (
            ("database", self.db.check),
            ("schema", self._check_schema),
            ("blob_store", self.blobs.check),
            ("keys", self._check_keys),
        ):
            try:
                probe()
                checks[name] = "ok"
            except Exception as exc:
                reason = exc.message if isinstance(exc, Unavailable | ConfigurationError) else None
                checks[name] = reason or f"{name} check failed"
        return checks

    def _check_schema(self) -> None:
        if current_revision(self.db) != head_revision():
            raise Unavailable("The database schema is not up to date; run 'salus migrate'.")

    def _check_keys(self) -> None:
        if self.keys is not None:
            self.keys.active_key_id()

    def close(self) -> None:
        self.db.dispose()
