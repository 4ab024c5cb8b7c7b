"""The HL7 v2 service: who sent a message, keep it, apply it, say how it went.

The order of one inbound message (HL7 v2.8 2.9, ADR 9):

1. parse the header (malformed → stored as ``rejected``, AE/AR with ERR);
2. identify the sending organization: the connection's TLS client certificate
   or address (:class:`~salus.security.edges.EdgeAuthenticator`), else the
   configured facility → client mapping; a facility that belongs to another
   organization, or an unknown sender, is refused (AR);
3. check the type is one Salus maps (else stored ``rejected``, AR 200/201);
4. **commit** the sealed message (``received``; a duplicate of a stored
   sending facility + MSH-10 returns the stored outcome instead);
5. apply it: map to FHIR and write through the FHIR store in one transaction
   that also marks the row ``applied``: the feed's principal, the policy
   engine and the audit log are the FHIR API's. A failure leaves the row
   ``failed`` with a safe error, for replay after a mapping fix;
6. only then the ACK is built (by the caller, at the protocol edge).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Connection, RowMapping

from salus.db.engine import Database
from salus.errors import (
    Conflict,
    Forbidden,
    NotAuthenticated,
    NotSupported,
    SalusError,
    UnprocessableContent,
)
from salus.fhir.searching import Searcher
from salus.fhir.store import FhirStore
from salus.hl7.ack import Ack
from salus.hl7.errors import APPLICATION_ERROR, Location, hl7_code_of, hl7_error, location_of
from salus.hl7.mapping import IGNORED, Context, Plan, plan_for, supported
from salus.hl7.parse import Header, Message, loose_header, parse_message
from salus.hl7.profiles import Profile, Profiles
from salus.hl7.store import MessageStore, NewMessage
from salus.security.directory import Directory
from salus.security.policy import AccessRequest, Interaction, PolicyEngine
from salus.security.principal import AuthMethod, Principal, Purpose

__all__ = ["Hl7Service", "Received"]

log = logging.getLogger("salus.hl7")

Resource = dict[str, Any]


@dataclass
class Received:
    """What the edge needs to answer one message."""

    ack: Ack
    header: Header | None
    raw_header: dict[int, str] = field(default_factory=dict)
    uid: str | None = None
    duplicate: bool = False
    charset: str | None = None


def ack_of(row: RowMapping) -> Ack:
    """The stored outcome of a message (what a duplicate is answered)."""
    code = row["ack_code"] or "AA"
    return Ack(code, row["error_code"], Location.parse(row["error_location"]), row["error"])


def _ack_for(exc: SalusError) -> Ack:
    return Ack(exc.hl7_ack, hl7_code_of(exc), location_of(exc), exc.message)


def _walk_local(value: Any, refs: dict[str, str]) -> None:
    if isinstance(value, dict):
        ref = value.get("reference")
        if isinstance(ref, str) and ref.startswith("local:"):
            target = refs.get(ref[6:])
            if target is None:
                raise UnprocessableContent("A mapping refers to a resource it did not write.")
            value["reference"] = target
        for item in value.values():
            _walk_local(item, refs)
    elif isinstance(value, list):
        for item in value:
            _walk_local(item, refs)


def _note(written: list[str], ref: str) -> None:
    """The message's resulting references: written, or found unchanged."""
    if ref not in written:
        written.append(ref)


def _same(existing: Resource, new: Resource) -> bool:
    """Whether an update would change nothing (then no new version is written)."""
    skip = ("meta", "id")
    return {k: v for k, v in existing.items() if k not in skip} == {
        k: v for k, v in new.items() if k not in skip
    }


class Hl7Service:
    def __init__(
        self,
        db: Database,
        store: MessageStore,
        fhir: FhirStore,
        searcher: Searcher | None,
        policy: PolicyEngine,
        directory: Directory,
        profiles: Profiles,
        *,
        base_url: str,
        apply_sync: bool = True,
    ) -> None:
        self.db = db
        self.store = store
        self.fhir = fhir
        self.searcher = searcher
        self.policy = policy
        self.directory = directory
        self.profiles = profiles
        self.base_url = base_url
        self.apply_sync = apply_sync
        #: Called after a message is committed and left for the background applier.
        self.on_pending: Callable[[], None] = lambda: None
        #: Called with (org profile, message, ack) when enhanced mode asks for an
        #: application acknowledgment (the outbound sender is wired in here).
        self.on_application_ack: Callable[[Profile, Message, Ack], None] = lambda *_: None
        self._principals: dict[tuple[str, str | None], tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    # -- who sent it -------------------------------------------------------------------
    def _client(self, client_id: str, address: str | None) -> Principal:
        key = (client_id, address)
        now = time.monotonic()
        with self._lock:
            cached = self._principals.get(key)
            if cached is not None and cached[0] > now:
                return cached[1]
        principal = self.directory.client_principal(client_id, AuthMethod.ADDRESS, address)
        with self._lock:
            self._principals[key] = (now + 5.0, principal)
        return principal

    def forget_principals(self) -> None:
        with self._lock:
            self._principals.clear()

    def identify(
        self, header: Header, connection: Principal | None, address: str | None
    ) -> Principal:
        """The principal a message acts as (see the module docstring, step 2)."""
        where = Location("MSH", 1, 4)
        claimed = self.profiles.by_facility(header.sending_facility)
        if connection is not None:
            if claimed is not None and claimed.org_id != connection.org_id:
                raise hl7_error(
                    Forbidden("The sending facility belongs to another organization."),
                    APPLICATION_ERROR,
                    where,
                )
            return connection
        if claimed is None or claimed.client is None or not claimed.allows_address(address):
            raise hl7_error(
                NotAuthenticated("This sender is not known here."), APPLICATION_ERROR, where
            )
        principal = self._client(claimed.client, address)
        if principal.org_id != claimed.org_id:
            raise hl7_error(
                Forbidden("The sending facility belongs to another organization."),
                APPLICATION_ERROR,
                where,
            )
        return principal

    # -- receiving ---------------------------------------------------------------------
    def receive(
        self,
        raw: bytes,
        *,
        source: str = "mllp",
        peer: str | None = None,
        connection: Principal | None = None,
    ) -> Received:
        """Store one message and (in synchronous mode) apply it; never raises SalusError."""
        try:
            message = parse_message(raw)
        except SalusError as exc:
            # A message that cannot be read is rejected, whatever the class says.
            header, raw_header = loose_header(raw)
            ack = Ack("AR", hl7_code_of(exc), location_of(exc), exc.message)
            self._reject(raw, source, peer, header, None, ack)
            return Received(ack, header, raw_header)
        header = message.header
        msh = message.require("MSH")
        raw_header = {n: msh.raw_field(n) for n in (3, 4, 5, 6)}
        try:
            principal = self.identify(header, connection, peer)
        except SalusError as exc:
            ack = _ack_for(exc)
            self._reject(raw, source, peer, header, None, ack, message.charset)
            return Received(ack, header, raw_header, charset=message.charset)
        profile = self.profiles.for_org(principal.org_id)
        if profile.fallback_charset != "8859/1" and not header.charsets:
            message = parse_message(raw, profile.fallback_charset)
        item = NewMessage(
            raw=raw,
            source=source,
            peer=peer,
            org_id=principal.org_id,
            client_id=principal.client_id,
            sending_application=header.sending_application,
            sending_facility=header.sending_facility,
            control_id=header.control_id,
            message_type=header.message_type,
            version=header.version,
            processing_id=header.processing_id,
            charset=message.charset,
            ack_mode="enhanced" if header.enhanced else "original",
        )
        if header.message_code.upper() in IGNORED:
            item.state, item.ack_code = "ignored", "AA"
        else:
            try:
                supported(header.message_code, header.trigger_event)
            except NotSupported as exc:
                ack = _ack_for(exc)
                item.state, item.ack_code = "rejected", ack.code
                item.error_code, item.error = ack.error_code, ack.text
                item.error_location = str(ack.location) if ack.location else None
        row, duplicate = self.store.record(item)
        result = Received(
            ack_of(row), header, raw_header, str(row["uid"]), duplicate, message.charset
        )
        if duplicate or row["state"] != "received":
            return result
        if self.apply_sync and not header.enhanced:
            result.ack = self.apply(int(row["id"]), message=message, principal=principal)
        else:
            self.on_pending()
        return result

    def _reject(
        self,
        raw: bytes,
        source: str,
        peer: str | None,
        header: Header | None,
        principal: Principal | None,
        ack: Ack,
        charset: str | None = None,
    ) -> None:
        """Keep a refused message too (nothing received is dropped), without a sender key."""
        self.store.record(
            NewMessage(
                raw=raw,
                source=source,
                peer=peer,
                org_id=principal.org_id if principal else None,
                client_id=principal.client_id if principal else None,
                sending_application=header.sending_application if header else None,
                sending_facility=header.sending_facility if header else "",
                control_id=header.control_id if header else None,
                message_type=header.message_type if header else None,
                version=header.version if header else None,
                processing_id=header.processing_id if header else None,
                charset=charset,
                ack_mode="enhanced" if header and header.enhanced else "original",
                state="rejected",
                ack_code=ack.code,
                error_code=ack.error_code,
                error_location=str(ack.location) if ack.location else None,
                error=ack.text,
            )
        )

    # -- applying ----------------------------------------------------------------------
    def apply(
        self,
        message_id: int,
        *,
        message: Message | None = None,
        principal: Principal | None = None,
    ) -> Ack:
        """Map a ``received`` message and write it, once (the row is the claim)."""
        row = self.store.get(message_id)
        if row["state"] != "received":
            return ack_of(row)
        profile = self.profiles.for_org(str(row["org_id"]))
        try:
            if principal is None:
                if not row["client_id"]:
                    raise NotAuthenticated("The message has no sending client.")
                principal = self._client(str(row["client_id"]), row["peer"])
            if message is None:
                message = parse_message(self.store.body(row), profile.fallback_charset)
            plan = plan_for(Context(message, profile))
            with self.db.write() as conn:
                locked = self.store.lock(conn, message_id)
                if locked["state"] != "received":
                    return ack_of(locked)
                written = self._run(conn, plan, principal)
                self.store.set_outcome(
                    conn, message_id, state="applied", ack_code="AA", resources=written
                )
            ack = Ack("AA")
        except SalusError as exc:
            ack = _ack_for(exc)
            self._failed(message_id, ack)
        except Exception as exc:  # a mapping bug: keep the message for replay
            log.error("HL7 message %s could not be applied: %s", message_id, type(exc).__name__)
            ack = Ack("AE", APPLICATION_ERROR, None, "The message could not be applied.")
            self._failed(message_id, ack)
        if message is not None and row["ack_mode"] == "enhanced":
            self.on_application_ack(profile, message, ack)
        return ack

    def _failed(self, message_id: int, ack: Ack) -> None:
        with self.db.write() as conn:
            self.store.set_outcome(
                conn,
                message_id,
                state="failed",
                ack_code=ack.code,
                error_code=ack.error_code,
                error_location=str(ack.location) if ack.location else None,
                error=ack.text,
                only_states=("received",),
            )

    def _run(self, conn: Connection, plan: Plan, principal: Principal) -> list[str]:
        """Run a plan's steps through the FHIR store, under the feed's access policy."""
        refs: dict[str, str] = {}
        bodies: dict[str, Resource] = {}
        written: list[str] = []
        purpose = Purpose.OPERATIONS
        for step in plan.steps:
            if any(key not in refs for key in step.requires):
                continue
            existing: Resource | None = None
            if step.target is not None:
                existing = copy.deepcopy(bodies.get(step.target))
            elif step.match is not None:
                existing = self._find(conn, principal, purpose, step.res_type, step.match)
            if existing is None and (step.existing_only or step.target is not None):
                continue
            new = step.build(copy.deepcopy(existing) if existing is not None else None)
            if new is None:
                if existing is not None:
                    refs[step.key] = f"{step.res_type}/{existing['id']}"
                    bodies[step.key] = existing
                    _note(written, refs[step.key])
                continue
            new = copy.deepcopy(new)
            _walk_local(new, refs)
            if existing is not None and _same(existing, new):
                refs[step.key] = f"{step.res_type}/{existing['id']}"
                bodies[step.key] = existing
                _note(written, refs[step.key])
                continue
            if existing is not None:
                self.policy.authorize(
                    principal, AccessRequest(step.res_type, Interaction.UPDATE, purpose)
                )
                new["id"] = existing["id"]
                stored, _ = self.fhir.update(conn, principal, step.res_type, existing["id"], new)
            else:
                self.policy.authorize(
                    principal, AccessRequest(step.res_type, Interaction.CREATE, purpose)
                )
                new.pop("id", None)
                stored = self.fhir.create(conn, principal, new)
            refs[step.key] = f"{stored.res_type}/{stored.res_id}"
            bodies[step.key] = stored.resource or new
            _note(written, refs[step.key])
        return written

    def _find(
        self,
        conn: Connection,
        principal: Principal,
        purpose: Purpose,
        res_type: str,
        params: list[tuple[str, str]],
    ) -> Resource | None:
        if self.searcher is None:
            raise NotSupported("Search is not available.")
        decision = self.policy.authorize(
            principal, AccessRequest(res_type, Interaction.SEARCH, purpose)
        )
        result = self.searcher.search(
            conn, decision.require(), res_type, [*params, ("_count", "2")], base_url=self.base_url
        )
        if len(result.matches) > 1:
            raise hl7_error(
                Conflict(f"Several {res_type} resources have this message's identifier."),
                "206",
            )
        if not result.matches:
            return None
        return result.matches[0].resource

    # -- replay ------------------------------------------------------------------------
    def replay(self, message_id: int) -> Ack:
        """Apply a ``failed`` (or ``rejected``) message again, after a mapping fix."""
        row = self.store.get(message_id)
        if row["state"] not in ("failed", "rejected", "received"):
            raise hl7_error(
                Conflict("Only failed, rejected or pending messages are replayed."), "206"
            )
        if row["state"] == "rejected" or not row["client_id"]:
            message = parse_message(self.store.body(row))
            principal = self.identify(message.header, None, None)
            supported(message.header.message_code, message.header.trigger_event)
            extra = {"org_id": principal.org_id, "client_id": principal.client_id}
        else:
            extra = {}
        with self.db.write() as conn:
            self.store.set_outcome(
                conn,
                message_id,
                state="received",
                ack_code=None,
                attempt=False,
                only_states=(row["state"],),
                extra=extra,
            )
        return self.apply(message_id)
