"""The demo network in Salus's directory: organizations, users with their roles,
integration clients, the DICOM AE title of each hospital and the HL7 profiles
file that maps each hospital's MLLP feed (docs/dicom.md, docs/hl7.md).

It runs in-process through :class:`~salus.security.directory.Directory` (every
change audited, as ``salus org|user|client`` do) before the server starts.
"""

from __future__ import annotations

from pathlib import Path

from salus.config import Settings
from salus.demo.hl7_out import NATIONAL_ID_AUTHORITY
from salus.demo.model import Network
from salus.demo.render import Rendered
from salus.security.principal import AuthMethod, Principal, PrincipalKind

__all__ = ["DEMO_ACTOR", "hl7_profiles", "set_up_directory"]

DEMO_ACTOR = Principal(
    kind=PrincipalKind.SYSTEM, id="salus-demo", org_id="network-ops", auth_method=AuthMethod.LOCAL
)


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def hl7_profiles(network: Network) -> str:
    """The ``SALUS_HL7_PROFILES_FILE`` of the network: each hospital's feed is
    recognized by its sending facility (MSH-4) and uses its ``-his`` client."""
    lines = ["# Written by `salus demo`: one profile per hospital (docs/hl7.md).", ""]
    for spec in network.hospitals:
        lines += [
            f"[org.{spec.org_id}]",
            f"client = {_toml_string(spec.org_id + '-his')}",
            f"facilities = [{_toml_string(spec.facility)}]",
            f"mrn_authorities = [{_toml_string(spec.facility)}]",
            f"national_id_authorities = [{_toml_string(NATIONAL_ID_AUTHORITY)}]",
            f"timezone = {_toml_string(spec.timezone)}",
            "",
        ]
    return "\n".join(lines)


def set_up_directory(settings: Settings, network: Network, rendered: Rendered) -> dict[str, str]:
    """Create everything; return the client secrets (client id -> secret, shown once)."""
    from salus.services import Services

    services = Services.build(settings)
    secrets: dict[str, str] = {}
    try:
        directory = services.directory
        for org in rendered.manifest["organizations"]:
            if org["kind"] == "operator":
                directory.create_organization(DEMO_ACTOR, org["id"], org["name"], org["kind"])
        for org in rendered.manifest["organizations"]:
            if org["kind"] != "operator":
                directory.create_organization(DEMO_ACTOR, org["id"], org["name"], org["kind"])
        for login in network.logins:
            if login.kind == "user":
                directory.create_user(
                    DEMO_ACTOR,
                    username=login.name,
                    org_id=login.org_id,
                    display_name=login.display,
                    password=login.password or "",
                    roles=[login.role],
                )
            else:
                created = directory.create_client(
                    DEMO_ACTOR,
                    client_id=login.name,
                    org_id=login.org_id,
                    name=login.display,
                    auth_method="client_secret",
                    roles=[login.role],
                )
                secrets[login.name] = created.secret or ""
        for spec in network.hospitals:
            directory.add_edge_identity(
                DEMO_ACTOR, kind="dicom", client_id=f"{spec.org_id}-pacs", ae_title=spec.ae_title
            )
    finally:
        services.close()
    return secrets


def write_profiles(network: Network, folder: Path) -> Path:
    path = folder / "hl7-profiles.toml"
    path.write_text(hl7_profiles(network), encoding="utf-8")
    return path
