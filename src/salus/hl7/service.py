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
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
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
from salus.hl7.errors import (
    APPLICATION_ERROR,
    UNSUPPORTED_PROCESSING_ID,
    Location,
    hl7_code_of,
    hl7_error,
    location_of,
)
from salus.hl7.mapping import IGNORED, Context, Plan, plan_for, supported
from salus.hl7.parse import Header, Message, loose_header, parse_message
from salus.hl7.profiles import Profile, Profiles
from salus.hl7.store import MessageStore, NewMessage, Row
from salus.security.directory import Directory
from salus.security.policy import AccessRequest, Interaction, PolicyEngine
from salus.security.principal import AuthMethod, Principal, Purpose

__all__ = ["Hl7Service", "Prepared", "Received"]

log = logging.getLogger("salus.hl7")

#: The acknowledgment of a message that fails for a reason that is not the message's.
_MAPPING_BUG = Ack("AE", APPLICATION_ERROR, None, "The message could not be applied.")

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


@dataclass
class Prepared:
    """One message, read and identified, ready to commit (:meth:`Hl7Service.prepare`)."""

    item: NewMessage
    header: Header | None
    raw_header: dict[int, str] = field(default_factory=dict)
    message: Message | None = None
    principal: Principal | None = None


@dataclass
class _Planned:
    """A message of a batch, parsed and planned before the write transaction."""

    row: RowMapping
    profile: Profile
    message: Message | None = None
    plan: Plan | None = None
    principal: Principal | None = None
    failure: Ack | None = None  # set when it could not be planned


def ack_of(row: Row) -> Ack:
    """The stored outcome of a message (what a duplicate is answered)."""
    code = row["ack_code"] or "AA"
    return Ack(code, row["error_code"], Location.parse(row["error_location"]), row["error"])


def _rejected(
    raw: bytes,
    source: str,
    peer: str | None,
    header: Header | None,
    ack: Ack,
    charset: str | None = None,
) -> NewMessage:
    """A refused message is kept too (nothing received is dropped), without a sender key."""
    return NewMessage(
        raw=raw,
        source=source,
        peer=peer,
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
        production: bool = False,
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
        self.production = production
        #: Bumped when a row is left for the applier; apply_earlier() skips its query
        #: while nothing was left since it last found none (the first call always looks).
        self._pending_epoch = 1
        self._drained_epoch = 0
        #: Called after a message is committed and left for the background applier.
        self.on_pending: Callable[[], None] = lambda: None
        #: Called with (org profile, message, ack) when enhanced mode asks for an
        #: application acknowledgment (the outbound sender is wired in here).
        self.on_application_ack: Callable[[Profile, Message, Ack], None] = lambda *_: None
        self._principals: dict[tuple[str, str | None], tuple[float, Principal]] = {}
        #: Plans that apply_batch made and its time budget left (the applier's thread only).
        self._plans: dict[int, _Planned] = {}
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
        prepared = self.prepare(raw, source=source, peer=peer, connection=connection)
        [(row, duplicate)] = self.store.record_many([prepared.item])
        return self.settle(prepared, row, duplicate)

    def prepare(
        self,
        raw: bytes,
        *,
        source: str = "mllp",
        peer: str | None = None,
        connection: Principal | None = None,
    ) -> Prepared:
        """Steps 1-3 (no I/O but the cached sender lookup): the row to commit."""
        try:
            message = parse_message(raw)
        except SalusError as exc:
            # A message that cannot be read is rejected, whatever the class says.
            header, raw_header = loose_header(raw)
            ack = Ack("AR", hl7_code_of(exc), location_of(exc), exc.message)
            return Prepared(_rejected(raw, source, peer, header, ack), header, raw_header)
        header = message.header
        msh = message.require("MSH")
        raw_header = {n: msh.raw_field(n) for n in (3, 4, 5, 6)}
        try:
            principal = self.identify(header, connection, peer)
            profile = self.profiles.for_org(principal.org_id)
            self._check_processing_id(profile, header)
        except SalusError as exc:
            item = _rejected(raw, source, peer, header, _ack_for(exc), message.charset)
            return Prepared(item, header, raw_header)
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
        return Prepared(item, header, raw_header, message, principal)

    def _check_processing_id(self, profile: Profile, header: Header) -> None:
        """MSH-11 (HL7 v2.8 2.14.9.11, table 0103: P production, T training, D debugging):
        refuse the processing ids the profile does not allow (AR, ERR 202 at MSH-11).

        Without ``processing_ids`` in the profile, a production hub
        (``SALUS_MODE=production``) takes ``P`` only and a development hub all.
        """
        allowed = profile.processing_ids
        if allowed is None:
            if not self.production:
                return  # a development hub takes test and debugging feeds
            allowed = ("P",)
        if header.processing_id.strip().upper() not in allowed:
            raise hl7_error(
                NotSupported("This processing id (MSH-11) is not accepted here."),
                UNSUPPORTED_PROCESSING_ID,
                Location("MSH", 1, 11),
            )

    def settle(self, prepared: Prepared, row: Row, duplicate: bool) -> Received:
        """After the commit: step 5 in synchronous mode, and the outcome to acknowledge."""
        header = prepared.header
        charset = prepared.message.charset if prepared.message is not None else None
        if prepared.message is None and prepared.item.charset:
            charset = prepared.item.charset
        result = Received(
            ack_of(row), header, prepared.raw_header, str(row["uid"]), duplicate, charset
        )
        if duplicate or row["state"] != "received":
            return result
        if self.apply_sync and header is not None and not header.enhanced:
            self.apply_earlier(int(row["id"]))
            result.ack = self.apply(
                int(row["id"]), message=prepared.message, principal=prepared.principal
            )
        else:
            with self._lock:
                self._pending_epoch += 1
            self.on_pending()
        return result

    def apply_earlier(self, message_id: int) -> None:
        """Apply messages committed before ``message_id`` and not applied yet (left by a
        crash, or by enhanced mode) first, so a feed's messages apply in arrival order."""
        while True:
            with self._lock:
                epoch = self._pending_epoch
            if epoch == self._drained_epoch:
                return
            ids = self.store.pending(100, before_id=message_id)
            for earlier in ids:
                self.apply(earlier)
            if len(ids) < 100:
                with self._lock:
                    self._drained_epoch = epoch
                return

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
            principal, message, plan = self._plan(row, profile, message, principal)
            with self.db.write() as conn:
                done = self._apply_in(conn, message_id, plan, principal)
                if done is not None:
                    return done
            ack = Ack("AA")
        except SalusError as exc:
            ack = _ack_for(exc)
            self._failed(message_id, ack)
        except Exception as exc:  # a mapping bug: keep the message for replay
            log.error("HL7 message %s could not be applied: %s", message_id, type(exc).__name__)
            ack = _MAPPING_BUG
            self._failed(message_id, ack)
        if message is not None and row["ack_mode"] == "enhanced":
            self.on_application_ack(profile, message, ack)
        return ack

    def apply_batch(self, message_ids: Sequence[int], *, budget: float = 0.1) -> int:
        """Apply several ``received`` messages, in this order, in ONE write transaction;
        returns how many of ``message_ids`` were settled (the rest are left for the
        next call).

        The background applier's path: each message still maps and writes as
        :meth:`apply` does, inside its own savepoint, so a message that fails is
        rolled back alone and marked ``failed`` while the others commit; but the
        backlog pays one durable commit per batch instead of one per message
        (ADR 10, stop-14 amendment). Parsing and planning happen before the write
        transaction (the plans of messages a call leaves are kept for the next).
        The batch stops taking messages after ``budget`` seconds of writing, so
        the MLLP committer never waits long for SQLite's write lock. If the
        transaction itself fails (a lost connection, a deadlock), nothing of it
        stays and the messages are applied one by one instead.
        """
        kept = {i: self._plans[i] for i in message_ids if i in self._plans}
        rows = self.store.get_many([i for i in message_ids if i not in kept])
        planned: list[_Planned] = []
        for message_id in message_ids:
            if message_id in kept:  # planned by the previous call, which its budget cut
                planned.append(kept[message_id])
                continue
            row = rows.get(message_id)
            if row is None or row["state"] != "received":
                continue
            profile = self.profiles.for_org(str(row["org_id"]))
            try:
                principal, message, plan = self._plan(row, profile, None, None)
                planned.append(_Planned(row, profile, message, plan, principal))
            except SalusError as exc:
                planned.append(_Planned(row, profile, failure=_ack_for(exc)))
            except Exception as exc:  # a mapping bug: keep the message for replay
                log.error("HL7 message %s could not be planned: %s", row["id"], type(exc).__name__)
                planned.append(_Planned(row, profile, failure=_MAPPING_BUG))
        if not planned:
            return len(message_ids)
        settled: list[tuple[_Planned, Ack]] = []
        try:
            with self.db.write() as conn:
                deadline = time.monotonic() + budget
                for item in planned:
                    if settled and time.monotonic() > deadline:
                        break
                    message_id = int(item.row["id"])
                    ack = item.failure
                    if ack is None:
                        assert item.plan is not None and item.principal is not None  # noqa: S101
                        savepoint = conn.begin_nested()
                        try:
                            done = self._apply_in(conn, message_id, item.plan, item.principal)
                        except SalusError as exc:
                            savepoint.rollback()
                            ack = _ack_for(exc)
                        except Exception as exc:  # a mapping bug: keep it for replay
                            savepoint.rollback()
                            log.error(
                                "HL7 message %s could not be applied: %s",
                                message_id,
                                type(exc).__name__,
                            )
                            ack = _MAPPING_BUG
                        else:
                            savepoint.commit()
                            if done is not None:  # settled by someone else meanwhile
                                continue
                            ack = Ack("AA")
                    if ack.code != "AA":
                        self._set_failed(conn, message_id, ack)
                    settled.append((item, ack))
        except Exception as exc:  # the transaction failed: nothing of it stays
            log.warning("HL7 applier: a batch failed (%s); applying one by one", type(exc).__name__)
            self._plans = {}
            for item in planned:
                self.apply(int(item.row["id"]))
            return len(message_ids)
        for item, ack in settled:
            if item.message is not None and item.row["ack_mode"] == "enhanced":
                self.on_application_ack(item.profile, item.message, ack)
        last = int(settled[-1][0].row["id"]) if settled else None
        if last is None or len(settled) == len(planned):
            self._plans = {}
            return len(message_ids)
        taken = message_ids.index(last) + 1
        # Keep the plans of the messages the budget left for the next call.
        self._plans = {
            int(p.row["id"]): p for p in planned if int(p.row["id"]) in message_ids[taken:]
        }
        return taken

    def _plan(
        self,
        row: RowMapping,
        profile: Profile,
        message: Message | None,
        principal: Principal | None,
    ) -> tuple[Principal, Message, Plan]:
        """The sending client's principal, the parsed message and its mapping plan."""
        if principal is None:
            if not row["client_id"]:
                raise NotAuthenticated("The message has no sending client.")
            principal = self._client(str(row["client_id"]), row["peer"])
        if message is None:
            message = parse_message(self.store.body(row), profile.fallback_charset)
        return principal, message, plan_for(Context(message, profile))

    def _apply_in(
        self, conn: Connection, message_id: int, plan: Plan, principal: Principal
    ) -> Ack | None:
        """Write one planned message in ``conn``: None when applied now, else the stored
        outcome of a message that another applier settled first."""
        locked = self.store.lock(conn, message_id)
        if locked["state"] != "received":
            return ack_of(locked)
        written = self._run(conn, plan, principal)
        self.store.set_outcome(conn, message_id, state="applied", ack_code="AA", resources=written)
        return None

    def _failed(self, message_id: int, ack: Ack) -> None:
        with self.db.write() as conn:
            self._set_failed(conn, message_id, ack)

    def _set_failed(self, conn: Connection, message_id: int, ack: Ack) -> None:
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

    def _lock_identities(self, conn: Connection, plan: Plan, org_id: str) -> None:
        """Serialize find-or-create of the same identifiers (PostgreSQL).

        Two messages about one patient applied at once (two connections, or a
        resend and the recovery sweep) would each find nothing and create it
        twice under READ COMMITTED. A transaction-scoped advisory lock per
        (organization, type, search), taken in sorted order before the first
        search, makes the second wait for the first's commit; each statement
        after it sees that commit. SQLite needs none: BEGIN IMMEDIATE already
        serializes writers.
        """
        if self.db.is_sqlite:
            return
        keys = sorted(
            {
                f"{org_id}|{step.res_type}|{sorted(step.match)}"
                for step in plan.steps
                if step.match is not None
            }
        )
        for key in keys:
            digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
            conn.execute(
                text("SELECT pg_advisory_xact_lock(:k)"),
                {"k": int.from_bytes(digest, "big", signed=True)},
            )

    def _run(self, conn: Connection, plan: Plan, principal: Principal) -> list[str]:
        """Run a plan's steps through the FHIR store, under the feed's access policy."""
        self._lock_identities(conn, plan, principal.org_id)
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
            # A sender known by its connection (a client certificate, an
            # import's --client) stays the sender; others are known by MSH-4.
            connection = (
                self._client(str(row["client_id"]), row["peer"]) if row["client_id"] else None
            )
            principal = self.identify(message.header, connection, row["peer"])
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
