"""Settings: built once at start-up and passed down.

Sources, strongest first: explicit overrides (command-line options), the
environment (``SALUS_<NAME>``), a TOML file (``--config`` or ``SALUS_CONFIG``;
top-level keys named like the fields), then the defaults below. Nothing here
runs at import time. Every field is documented in ``docs/configuration.md``
(a test keeps the two in step).
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from salus.errors import ConfigurationError

__all__ = ["DEV_SECRET_KEY", "Settings", "load_settings"]

ENV_PREFIX = "SALUS_"
#: Environment variables with the prefix that are not settings.
NON_SETTING_ENV = frozenset({"SALUS_CONFIG"})
NON_SETTING_ENV_PREFIXES = ("SALUS_TEST_", "SALUS_BENCH_")

#: The well-known development secret; refused in production.
DEV_SECRET_KEY = "salus-development-secret-do-not-use-in-production"  # noqa: S105
MIN_SECRET_LENGTH = 32


class Settings(BaseModel):
    """Every setting of a Salus process. See ``docs/configuration.md``."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # -- general -----------------------------------------------------------------
    mode: Literal["development", "production"] = "development"
    data_dir: Path = Path("salus-data")
    secret_key: SecretStr = SecretStr(DEV_SECRET_KEY)

    # -- database ----------------------------------------------------------------
    database_url: SecretStr | None = None
    database_pool_size: int = Field(default=10, ge=1, le=200)
    migrate_on_start: bool = True
    database_analyze_seconds: float = Field(default=300.0, ge=0)
    #: SQLite only: each connection's page cache (PRAGMA cache_size), in MiB.
    database_sqlite_cache_mb: int = Field(default=64, ge=2, le=4096)
    # -- SQLite WAL --
    #: SQLite only: the server checkpoints the WAL from a background thread this
    #: often (0: inside the commits, SQLite's automatic checkpoint; ADR 23).
    database_sqlite_checkpoint_seconds: float = Field(default=1.0, ge=0, le=3600)
    #: SQLite only: the WAL's bound in MiB (journal_size_limit; emptied above it).
    database_sqlite_wal_limit_mb: int = Field(default=64, ge=1, le=65536)
    #: SQLite only: under load the server restarts a WAL holding this many MiB
    #: (a quarter of the limit if less) once its checkpoints have caught up
    #: (0, the default: only at the limit; ADR 23, stop 17: measured, no gain).
    database_sqlite_wal_restart_mb: int = Field(default=0, ge=0, le=65536)

    # -- blob store --------------------------------------------------------------
    blob_backend: Literal["filesystem", "s3"] = "filesystem"
    blob_dir: Path | None = None
    blob_fsync: bool = True
    s3_endpoint_url: str | None = None
    s3_bucket: str | None = None
    s3_prefix: str = ""
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None

    # -- encryption at rest ---------------------------------------------------------
    encryption_enabled: bool = True
    key_provider: Literal["file"] = "file"
    key_file: Path | None = None

    # -- HTTP server -------------------------------------------------------------
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    http_max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    http_workers: int = Field(default=0, ge=0, le=64)
    shutdown_timeout: float = Field(default=30.0, ge=0)
    metrics_enabled: bool = True

    # -- TLS and public address ---------------------------------------------------
    public_url: str | None = None
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None

    # -- authentication and access control ------------------------------------------
    auth_token_ttl: int = Field(default=300, ge=30, le=3600)
    auth_signing_alg: Literal["ES256", "RS256"] = "ES256"
    auth_oidc_issuer: str | None = None
    auth_oidc_jwks_url: str | None = None
    auth_oidc_audience: str | None = None
    auth_oidc_org_claim: str = "org"
    auth_oidc_roles_claim: str = "roles"
    login_max_failures: int = Field(default=5, ge=1)
    login_lockout_seconds: int = Field(default=900, ge=1)
    rate_limit_token_per_minute: int = Field(default=60, ge=1)
    rate_limit_login_per_minute: int = Field(default=20, ge=1)
    break_glass_minutes: int = Field(default=60, ge=1, le=1440)
    audit_checkpoint_seconds: float = Field(default=60.0, gt=0)

    # -- logging -----------------------------------------------------------------
    log_format: Literal["plain", "json"] = "plain"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # -- job queue ---------------------------------------------------------------
    jobs_enabled: bool = True
    jobs_workers: int = Field(default=2, ge=1, le=64)
    jobs_poll_interval: float = Field(default=1.0, gt=0)
    jobs_max_attempts: int = Field(default=5, ge=1)
    jobs_backoff_base: float = Field(default=2.0, gt=0)
    jobs_backoff_max: float = Field(default=600.0, gt=0)
    jobs_lease_seconds: float = Field(default=300.0, gt=0)

    # -- DICOM -----------------------------------------------------------------------
    dicom_enabled: bool = False
    dicom_host: str = "127.0.0.1"
    dicom_port: int = Field(default=11112, ge=0, le=65535)
    dicom_ae_title: str = Field(default="SALUS", min_length=1, max_length=16)
    dicom_max_associations: int = Field(default=10, ge=1, le=1000)
    dicom_processes: int = Field(default=0, ge=0, le=64)
    dicom_timeout: float = Field(default=60.0, gt=0)
    dicom_unknown_ae_client: str | None = None
    dicom_move_destinations: dict[str, str] = Field(default_factory=dict)
    dicom_tls_certfile: Path | None = None
    dicom_tls_keyfile: Path | None = None
    dicom_tls_cafile: Path | None = None
    dicom_duplicate_policy: Literal["keep", "replace", "reject"] = "keep"
    dicom_patient_conflict: Literal["update", "keep", "reject"] = "update"
    dicom_stable_seconds: float = Field(default=60.0, ge=0)
    dicom_fhir_sync: bool = True
    dicom_blob_sweep_seconds: float = Field(default=3600.0, ge=0)
    dicomweb_qido_max_results: int = Field(default=1000, ge=1, le=100_000)

    @field_validator("dicom_move_destinations", mode="before")
    @classmethod
    def _dicom_destinations_json(cls, value: Any) -> Any:
        """The environment gives a JSON object as text (``{"AE": "host:port"}``)."""
        if isinstance(value, str):
            try:
                return json.loads(value) if value.strip() else {}
            except ValueError:
                raise ValueError("must be a JSON object of AE title to host:port") from None
        return value

    # -- HL7 v2 / MLLP ----------------------------------------------------------------
    mllp_enabled: bool = False
    mllp_host: str = "127.0.0.1"
    mllp_port: int = Field(default=2575, ge=0, le=65535)
    mllp_max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    mllp_read_timeout: float = Field(default=30.0, gt=0)
    mllp_idle_timeout: float = Field(default=600.0, gt=0)
    mllp_max_connections: int = Field(default=100, ge=1, le=10000)
    mllp_tls_certfile: Path | None = None
    mllp_tls_keyfile: Path | None = None
    mllp_tls_cafile: Path | None = None
    hl7_profiles_file: Path | None = None
    hl7_apply: Literal["sync", "async"] = "sync"
    #: 1 on both backends since the one-statement batch (ADR 10, stop-13 quiet run).
    hl7_commits_in_flight: int = Field(default=1, ge=1, le=8)

    # -- FHIR ------------------------------------------------------------------------
    fhir_enforce_profiles: bool = False
    fhir_import_max_bytes: int = Field(default=4 * 1024 * 1024 * 1024, ge=1024)

    # -- warehouse -------------------------------------------------------------------
    warehouse_part_rows: int = Field(default=250_000, ge=1000)
    warehouse_run_max_rows: int = Field(default=100_000, ge=1)
    warehouse_page_size: int = Field(default=2000, ge=10, le=50_000)
    warehouse_dataset_max_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    warehouse_dataset_max_rows: int = Field(default=50_000, ge=1)
    warehouse_indicator_min_cell: int = Field(default=5, ge=1, le=100)
    warehouse_indicator_interval: int = Field(default=86400, ge=0)

    # -- derived values ------------------------------------------------------------
    def database_url_value(self) -> str:
        """The SQLAlchemy URL; SQLite under the data folder by default."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite:///{(self.data_dir / 'salus.db').resolve()}"

    def is_sqlite(self) -> bool:
        return self.database_url_value().startswith("sqlite")

    def blob_path(self) -> Path:
        return self.blob_dir if self.blob_dir is not None else self.data_dir / "blobs"

    def key_path(self) -> Path:
        if self.key_file is not None:
            return self.key_file
        return self.data_dir / "keys" / "master-keys.json"

    def base_url(self) -> str:
        """The URL clients reach this server at: token issuer and audience."""
        if self.public_url:
            return self.public_url.rstrip("/")
        scheme = "https" if self.tls_certfile else "http"
        return f"{scheme}://{self.http_host}:{self.http_port}"

    def audit_checkpoint_path(self) -> Path:
        """Append-only copy of the signed audit checkpoints, outside the database."""
        return self.data_dir / "audit" / "checkpoints.log"

    def effective_http_workers(self) -> int:
        """Server processes: the setting, or one per core (at most 8) when 0."""
        if self.http_workers:
            return self.http_workers
        return max(1, min(8, os.cpu_count() or 1))

    def effective_job_workers(self) -> int:
        """SQLite has one writer: its queue runs a single worker."""
        return 1 if self.is_sqlite() else self.jobs_workers

    def check_safe(self) -> None:
        """Refuse settings that are unsafe in production (called at start-up)."""
        problems: list[str] = []
        if self.blob_backend == "s3" and not self.s3_bucket:
            problems.append("SALUS_S3_BUCKET is required when SALUS_BLOB_BACKEND=s3")
        if self.mode == "production":
            secret = self.secret_key.get_secret_value()
            if secret == DEV_SECRET_KEY or len(secret) < MIN_SECRET_LENGTH:
                problems.append(
                    "SALUS_SECRET_KEY must be set to a random value of at least "
                    f"{MIN_SECRET_LENGTH} characters in production"
                )
            if self.public_url is None or not self.public_url.startswith("https://"):
                problems.append("SALUS_PUBLIC_URL must be the https:// address in production")
            if not self.encryption_enabled:
                problems.append("SALUS_ENCRYPTION_ENABLED cannot be false in production")
            if self.blob_backend == "s3" and (
                self.s3_access_key_id is None or self.s3_secret_access_key is None
            ):
                problems.append("S3 credentials must be set explicitly in production")
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            problems.append("SALUS_TLS_CERTFILE and SALUS_TLS_KEYFILE must be set together")
        if bool(self.auth_oidc_issuer) != bool(self.auth_oidc_jwks_url):
            problems.append("SALUS_AUTH_OIDC_ISSUER and SALUS_AUTH_OIDC_JWKS_URL go together")
        if problems:
            raise ConfigurationError("; ".join(problems))


def _env_values(environ: Mapping[str, str]) -> dict[str, str]:
    fields = Settings.model_fields
    values: dict[str, str] = {}
    unknown: list[str] = []
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key in NON_SETTING_ENV:
            continue
        if key.startswith(NON_SETTING_ENV_PREFIXES):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name in fields:
            values[name] = value
        else:
            unknown.append(key)
    if unknown:
        raise ConfigurationError(
            "Unknown setting(s) in the environment: " + ", ".join(sorted(unknown))
        )
    return values


def _file_values(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigurationError(f"Configuration file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"Configuration file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(Settings.model_fields))
    if unknown:
        raise ConfigurationError(f"Unknown setting(s) in {path}: " + ", ".join(unknown))
    return data


def load_settings(
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the one :class:`Settings` object of a process."""
    env = os.environ if environ is None else environ
    if config_file is None and env.get("SALUS_CONFIG"):
        config_file = Path(env["SALUS_CONFIG"])
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(_file_values(config_file))
    values.update(_env_values(env))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        # Name the settings, never echo their values (they may be secrets).
        names = sorted({f"SALUS_{str(err['loc'][0]).upper()}" for err in exc.errors()})
        details = "; ".join(
            f"SALUS_{str(err['loc'][0]).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigurationError(f"Invalid setting(s) {', '.join(names)}: {details}") from None
