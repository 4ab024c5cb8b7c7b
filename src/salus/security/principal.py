"""Who is asking: the authenticated principal every request carries."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["AuthMethod", "Principal", "PrincipalKind", "Purpose"]


class PrincipalKind(StrEnum):
    USER = "user"  # a person (web console, or a token issued to them)
    CLIENT = "client"  # a system: OAuth client, or a DICOM/MLLP peer mapped to a client
    SYSTEM = "system"  # Salus itself (jobs, the CLI run by an operator on the host)


class AuthMethod(StrEnum):
    PASSWORD = "password"  # noqa: S105
    PASSWORD_TOTP = "password+totp"  # noqa: S105
    PRIVATE_KEY_JWT = "private_key_jwt"
    CLIENT_SECRET = "client_secret"  # noqa: S105
    OIDC = "oidc"  # a token from the configured external OpenID Connect provider
    AE_TITLE = "ae_title"
    TLS_CERT = "tls_cert"
    ADDRESS = "address"
    LOCAL = "local"  # the CLI on the server host


class Purpose(StrEnum):
    """Purpose of use (HL7 v3 ActReason codes, as in FHIR security labels)."""

    TREATMENT = "TREAT"
    OPERATIONS = "HOPERAT"
    RESEARCH = "HRESCH"
    PUBLIC_HEALTH = "PUBHLTH"
    EMERGENCY = "ETREAT"  # break-the-glass


@dataclass(frozen=True, slots=True)
class Principal:
    kind: PrincipalKind
    id: str
    org_id: str
    roles: frozenset[str] = field(default_factory=frozenset)
    #: SMART v2 scopes granted (``user/Observation.rs``, ``system/*.cruds``…).
    scopes: frozenset[str] = field(default_factory=frozenset)
    auth_method: AuthMethod = AuthMethod.LOCAL
    client_id: str | None = None
    token_id: str | None = None
    address: str | None = None

    @property
    def label(self) -> str:
        """``kind/id`` as written in audit events."""
        return f"{self.kind.value}/{self.id}"
