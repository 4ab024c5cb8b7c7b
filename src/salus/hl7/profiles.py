"""Per-hospital HL7 settings: who a feed is, how its identifiers and Z-segments
are read, and where outbound messages go.

They live in one TOML file (``SALUS_HL7_PROFILES_FILE``; format in
``docs/hl7.md``), read once at start-up::

    [org.hosp-a]
    client = "a-feed"                  # the directory client the feed acts as
    facilities = ["HOSPA"]             # MSH-4 values this hospital sends
    addresses = ["10.1.0.0/16"]        # optional: where facility-identified feeds may connect from
    mrn_authorities = ["HOSPA"]        # PID-3 assigning authorities (CX-4) of the MRN
    national_id_authorities = ["BYT"]
    insurance_authorities = ["BHXH"]
    z_segments = "extension"           # or "drop"
    timezone = "Asia/Ho_Chi_Minh"      # for HL7 times without an offset
    fallback_charset = "8859/1"        # when MSH-18 is empty and UTF-8 does not decode
    processing_ids = ["P", "T"]        # MSH-11 accepted (default: P in production mode)

    [destination.ris-a]
    host = "10.1.2.3"
    port = 2575
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from salus.errors import ConfigurationError

__all__ = ["Destination", "Profile", "Profiles", "load_profiles"]

_SAFE = re.compile(r"[^A-Za-z0-9.\-]")


@dataclass(frozen=True)
class Profile:
    org_id: str
    client: str | None = None
    facilities: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()
    mrn_authorities: tuple[str, ...] = ()
    mrn_system: str | None = None
    national_id_authorities: tuple[str, ...] = ()
    national_id_system: str = "urn:salus:national-id"
    insurance_authorities: tuple[str, ...] = ()
    insurance_system: str | None = None
    z_segments: str = "drop"
    timezone: str = "UTC"
    fallback_charset: str = "8859/1"
    ack_destination: str | None = None
    #: MSH-11 processing ids accepted (table 0103: P, T, D); None: P in production mode,
    #: any in development mode.
    processing_ids: tuple[str, ...] | None = None

    def system(self, kind: str) -> str:
        """The identifier system of this hospital's MRNs, visits, orders… (a URN)."""
        if kind == "mrn" and self.mrn_system:
            return self.mrn_system
        if kind == "insurance" and self.insurance_system:
            return self.insurance_system
        return f"urn:salus:org:{_SAFE.sub('-', self.org_id)}:{_SAFE.sub('-', kind)}"

    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def allows_address(self, address: str | None) -> bool:
        if not self.addresses:
            return True
        if address is None:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in ipaddress.ip_network(net, strict=False) for net in self.addresses)


@dataclass(frozen=True)
class Destination:
    name: str
    host: str
    port: int
    tls: bool = False
    ack_timeout: float = 30.0


@dataclass
class Profiles:
    orgs: dict[str, Profile] = field(default_factory=dict)
    destinations: dict[str, Destination] = field(default_factory=dict)

    def for_org(self, org_id: str) -> Profile:
        return self.orgs.get(org_id) or Profile(org_id)

    def by_facility(self, facility: str) -> Profile | None:
        for profile in self.orgs.values():
            if facility in profile.facilities:
                return profile
        return None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profiles:
        unknown = set(data) - {"org", "destination"}
        if unknown:
            raise ConfigurationError("HL7 profiles: unknown table(s) " + ", ".join(sorted(unknown)))
        orgs: dict[str, Profile] = {}
        names = set(Profile.__dataclass_fields__) - {"org_id"}
        for org_id, values in (data.get("org") or {}).items():
            bad = set(values) - names
            if bad:
                raise ConfigurationError(
                    f"HL7 profile {org_id}: unknown key(s) " + ", ".join(sorted(bad))
                )
            kwargs: dict[str, Any] = {
                k: tuple(v) if isinstance(v, list) else v for k, v in values.items()
            }
            profile = Profile(org_id, **kwargs)
            if profile.processing_ids is not None:
                ids = tuple(str(i).strip().upper() for i in profile.processing_ids)
                if not set(ids) <= {"P", "T", "D"}:
                    raise ConfigurationError(
                        f"HL7 profile {org_id}: processing_ids holds P, T or D"
                    )
                profile = replace(profile, processing_ids=ids)
            if profile.z_segments not in ("drop", "extension"):
                raise ConfigurationError(f"HL7 profile {org_id}: z_segments is drop or extension")
            try:
                profile.zone()
            except (ZoneInfoNotFoundError, ValueError):
                raise ConfigurationError(f"HL7 profile {org_id}: unknown timezone") from None
            for net in profile.addresses:
                try:
                    ipaddress.ip_network(net, strict=False)
                except ValueError:
                    raise ConfigurationError(
                        f"HL7 profile {org_id}: addresses holds a bad network"
                    ) from None
            orgs[org_id] = profile
        destinations = {}
        for name, values in (data.get("destination") or {}).items():
            try:
                destinations[name] = Destination(name, **values)
            except TypeError:
                raise ConfigurationError(f"HL7 destination {name}: needs host and port") from None
        claimed: dict[str, str] = {}
        for profile in orgs.values():
            for facility in profile.facilities:
                if facility in claimed:
                    raise ConfigurationError(
                        f"HL7 profiles: facility claimed by {claimed[facility]} "
                        f"and {profile.org_id}"
                    )
                claimed[facility] = profile.org_id
        return cls(orgs, destinations)


def load_profiles(path: Path | None) -> Profiles:
    if path is None:
        return Profiles()
    try:
        with path.open("rb") as fh:
            return Profiles.from_dict(tomllib.load(fh))
    except FileNotFoundError:
        raise ConfigurationError(f"HL7 profiles file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"HL7 profiles file {path} is not valid TOML: {exc}") from None
