"""Batch and transaction Bundles (FHIR R4 http.html#transaction).

A *transaction* is one database transaction: entries are processed in the
order the specification sets (DELETE, POST, PUT, GET), ``urn:uuid:`` full URLs
and conditional references (``Patient?identifier=…``) are resolved to the ids
the server assigns or finds, ``ifNoneExist`` and ``ifMatch`` are honoured, and
any failure rolls the whole Bundle back: nothing is left behind. A *batch*
processes each entry on its own and reports each outcome.

Conditional matching runs as a search under the caller's policy filter, so a
conditional create or reference never matches, and so never reveals, another
hospital's resource.
"""

from __future__ import annotations

import copy
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from salus.errors import (
    Conflict,
    InvalidInput,
    PreconditionFailed,
    SalusError,
    UnprocessableContent,
)
from salus.fhir.groupcommit import CreateGroup
from salus.fhir.prepare import PreparedCreates
from salus.fhir.store import FhirStore, Stored, new_id
from salus.fhir.writegate import GATE
from salus.security.policy import AccessRequest, Interaction, PolicyEngine
from salus.security.principal import Principal, Purpose

__all__ = ["BundleProcessor"]

_ORDER = {"DELETE": 0, "POST": 1, "MATCHED": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
_TYPE_ID = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})$")
_TYPE = re.compile(r"^([A-Z][A-Za-z]+)$")
MAX_ENTRIES = 10_000
#: Bundles written in one shared transaction at most (SQLite, creates only).
MAX_GROUP = 8


def _instant(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@contextmanager
def _entry_errors(entry: _Entry) -> Iterator[None]:
    """Name the entry in any error (the whole transaction is rolled back)."""
    try:
        yield
    except SalusError as exc:
        exc.message = f"Bundle.entry[{entry.index}]: {exc.message}"
        exc.expression = [f"Bundle.entry[{entry.index}]"] + exc.expression
        raise


def _failed_entry(creates: list[Any], exc: SalusError) -> int | None:
    """Which create a batched validation error belongs to (by the resource it names)."""
    failed = getattr(exc, "resource_index", None)
    if isinstance(failed, int) and 0 <= failed < len(creates):
        return int(creates[failed].index)
    return None


def _creates_only(entries: list[_Entry]) -> bool:
    """Whether a transaction only creates, with no condition that needs the
    database (``ifNoneExist``, conditional references)."""
    for entry in entries:
        if entry.method != "POST" or entry.if_none_exist or entry.resource is None:
            return False
        for ref in _walk_references(entry.resource):
            value = ref["reference"]
            if "?" in value and _TYPE.match(value.split("?", 1)[0]):
                return False
    return True


def _walk_references(value: Any) -> Iterator[dict[str, Any]]:
    """Every ``{"reference": …}`` object inside a resource."""
    if isinstance(value, dict):
        if isinstance(value.get("reference"), str):
            yield value
        for item in value.values():
            yield from _walk_references(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk_references(item)


@dataclass(slots=True)
class _Entry:
    index: int
    method: str
    url: str
    resource: dict[str, Any] | None
    full_url: str | None
    if_none_exist: str | None
    if_match: int | None


Matcher = Callable[[Any, str, list[tuple[str, str]]], list[Stored]]


@dataclass(frozen=True, slots=True)
class _Call:
    """Who posted the Bundle, for what, where, and how conditions are searched."""

    principal: Principal
    purpose: Purpose | None
    base_url: str
    match: Matcher


class _BundleGroup(CreateGroup):
    """Group commit of SQLite transaction Bundles that only create
    (:class:`~salus.fhir.groupcommit.CreateGroup`): the Bundles of one
    process that are queued when the group's leader gets the write lock
    (those prepared while it waited for it included) are written together:
    one lock turn, one fsync, and the index pages that several Bundles dirty
    written once (ADR 21, stop 17). Each Bundle still all or nothing: if the
    shared transaction fails, each is written again in a transaction of its
    own. The holder holds the write gate."""

    def _commit(self, batches: list[PreparedCreates]) -> list[list[Stored]]:
        with self.db.write() as conn, GATE.holding():
            return [self.store.commit_creates(conn, batch) for batch in batches]


_GROUP_LOCK = threading.Lock()


def _bundle_group(db: Any, store: FhirStore) -> CreateGroup:
    with _GROUP_LOCK:
        group = store.bundle_group
        if group is None or group.db is not db:
            group = store.bundle_group = _BundleGroup(db, store, max_batch=MAX_GROUP)
        assert isinstance(group, CreateGroup)  # noqa: S101
        return group


class BundleProcessor:
    def __init__(self, db: Any, store: FhirStore, policy: PolicyEngine) -> None:
        self.db = db
        self.store = store
        self.policy = policy

    @contextmanager
    def _write(self) -> Iterator[Any]:
        """A write transaction whose thread, on SQLite, holds the write gate
        until its statements are done (:mod:`salus.fhir.writegate`): the
        process's threads preparing other writes wait at their checkpoints
        rather than take the interpreter lock from it at every SQLite step."""
        with self.db.write() as conn, GATE.holding(self.db.is_sqlite):
            yield conn

    def process(
        self,
        bundle: dict[str, Any],
        principal: Principal,
        purpose: Purpose | None,
        base_url: str,
        match: Matcher,
    ) -> dict[str, Any]:
        kind = bundle.get("type")
        if bundle.get("resourceType") != "Bundle" or kind not in ("transaction", "batch"):
            raise InvalidInput(
                "POST to the base takes a Bundle of type transaction or batch.",
                expression=["Bundle.type"],
            )
        raw_entries = bundle.get("entry") or []
        if not isinstance(raw_entries, list):
            raise InvalidInput("Bundle.entry must be a list.", expression=["Bundle.entry"])
        if len(raw_entries) > MAX_ENTRIES:
            raise InvalidInput(f"A Bundle may have at most {MAX_ENTRIES} entries.")
        entries = [self._entry(i, e) for i, e in enumerate(raw_entries)]
        call = _Call(principal, purpose, base_url, match)
        responses = (
            self._transaction(entries, call)
            if kind == "transaction"
            else self._batch(entries, call)
        )
        return {"resourceType": "Bundle", "type": f"{kind}-response", "entry": responses}

    # -- parsing -----------------------------------------------------------------------
    def _entry(self, index: int, raw: Any) -> _Entry:
        where = f"Bundle.entry[{index}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("request"), dict):
            raise InvalidInput("Every entry needs a request.", expression=[f"{where}.request"])
        request = raw["request"]
        method = str(request.get("method", "")).upper()
        if method not in _ORDER or method == "MATCHED":
            raise InvalidInput("Unsupported entry method.", expression=[f"{where}.request.method"])
        url = str(request.get("url", "")).strip().lstrip("/")
        if not url:
            raise InvalidInput(
                "Every entry needs a request.url.", expression=[f"{where}.request.url"]
            )
        resource = raw.get("resource")
        if method in ("POST", "PUT") and not isinstance(resource, dict):
            raise InvalidInput(
                "POST and PUT entries need a resource.", expression=[f"{where}.resource"]
            )
        if_match = None
        if request.get("ifMatch"):
            found = re.fullmatch(r'\s*(?:W/)?"?([0-9]{1,9})"?\s*', str(request["ifMatch"]))
            if not found:
                raise InvalidInput(
                    "ifMatch must be a version ETag.", expression=[f"{where}.request.ifMatch"]
                )
            if_match = int(found.group(1))
        full_url = raw.get("fullUrl")
        return _Entry(
            index,
            method,
            url,
            resource if isinstance(resource, dict) else None,
            str(full_url) if full_url else None,
            request.get("ifNoneExist"),
            if_match,
        )

    # -- transaction -------------------------------------------------------------------
    def _transaction(self, entries: list[_Entry], call: _Call) -> list[dict[str, Any]]:
        """The transaction's one write mechanism: its creates prepared before
        the write lock where nothing they depend on can change meanwhile
        (:meth:`_creates_transaction`, :meth:`_checked_creates_transaction`),
        else everything inside the write transaction (:meth:`_transaction_in`)."""
        if _creates_only(entries):
            return self._creates_transaction(entries, call)
        if self.db.is_sqlite and all(e.method == "POST" for e in entries):
            return self._checked_creates_transaction(entries, call)
        with self._write() as conn:
            return self._transaction_in(conn, entries, call)

    def _transaction_in(
        self, conn: Any, entries: list[_Entry], call: _Call
    ) -> list[dict[str, Any]]:
        """The whole transaction inside the write transaction ``conn``."""
        responses: dict[int, dict[str, Any]] = {}
        ids = self._assign_ids(conn, entries, call)
        ordered = sorted(entries, key=lambda e: (_ORDER[e.method], e.index))
        creates = [e for e in ordered if e.method == "POST"]
        for entry in ordered:
            if entry.method == "POST":
                if entry is creates[0]:  # every create at once, in the POST slot
                    batch = self._prepare(conn, creates, call, ids)()
                    created = self._created(creates, self.store.commit_creates(conn, batch), call)
                    responses.update(zip([e.index for e in creates], created, strict=True))
                continue
            with _entry_errors(entry):
                responses[entry.index] = self._apply(conn, entry, call, ids)
        return [responses[i] for i in range(len(entries))]

    def _checked_creates_transaction(
        self, entries: list[_Entry], call: _Call
    ) -> list[dict[str, Any]]:
        """Creates with conditions (``ifNoneExist``, conditional references) on
        SQLite, whose one writer would otherwise wait for all of their work.

        The conditions are matched on a read snapshot and the creates prepared
        (validated, sealed, indexed, encoded) before the write lock; under the
        lock every condition is matched again, and only if each finds exactly
        what it found before are the prepared rows written. If any differs
        (another writer committed in between), the transaction is worked out
        again from the original entries inside the lock, as if nothing had
        been prepared. A failure of the preparation is treated the same way,
        so that a condition that failed only on the older snapshot cannot
        fail the transaction."""
        original = [(e.method, e.url, copy.deepcopy(e.resource)) for e in entries]
        seen: list[tuple[str, list[tuple[str, str]], list[str]]] = []

        def recording(conn: Any, res_type: str, params: list[tuple[str, str]]) -> list[Stored]:
            found = call.match(conn, res_type, params)
            seen.append((res_type, list(params), [s.res_id for s in found]))
            return found

        prepared: PreparedCreates | None = None
        snapshot_call = _Call(call.principal, call.purpose, call.base_url, recording)
        try:
            with self.db.read() as snapshot:
                ids = self._assign_ids(snapshot, entries, snapshot_call)
                finish = self._prepare(snapshot, entries, snapshot_call, ids)
            prepared = self.store.encode(finish(), self.db.engine.dialect)
        except SalusError:
            prepared = None
        with self._write() as conn:
            if prepared is not None and all(
                [s.res_id for s in call.match(conn, res_type, params)] == found
                for res_type, params, found in seen
            ):
                return self._created(entries, self.store.commit_creates(conn, prepared), call)
            for entry, (method, url, resource) in zip(entries, original, strict=True):
                entry.method, entry.url, entry.resource = method, url, resource
            return self._transaction_in(conn, entries, call)

    def _creates_transaction(self, entries: list[_Entry], call: _Call) -> list[dict[str, Any]]:
        """A transaction of new resources only (no conditions): ids, references,
        validation, sealing and index values are worked out before the write
        transaction, which then holds only the inserts."""
        batch = self._prepare(None, entries, call, self._assign_ids(None, entries, call))()
        if self.db.is_sqlite:  # written with the Bundles ready meanwhile (ADR 21)
            stored = _bundle_group(self.db, self.store).commit(batch)
        else:
            with self._write() as conn:
                stored = self.store.commit_creates(conn, batch)
        return self._created(entries, stored, call)

    def _prepare(
        self, conn: Any, entries: list[_Entry], call: _Call, ids: dict[str, str]
    ) -> Callable[[], PreparedCreates]:
        """The POST entries of ``entries`` (those not matched by ``ifNoneExist``)
        for :meth:`FhirStore.commit_creates`: now their references are resolved
        (conditional ones searched on ``conn``) and creation authorized per
        type; the step returned validates, seals and indexes them (no database
        needed), an error naming its entry."""
        creates = [e for e in entries if e.method == "POST"]
        items: list[tuple[Mapping[str, Any], str | None]] = []
        authorized: set[str] = set()
        for entry in creates:
            GATE.checkpoint()
            with _entry_errors(entry):
                assert entry.resource is not None  # noqa: S101 - checked when parsed
                self._resolve(conn, entry.resource, ids, call)
                res_type, res_id = entry.url.split("/")
                if entry.resource.get("resourceType") != res_type:
                    raise UnprocessableContent("The resource type does not match the URL.")
                if res_type not in authorized:
                    self._authorize(call, res_type, Interaction.CREATE)
                    authorized.add(res_type)
                items.append((entry.resource, res_id))

        def finish() -> PreparedCreates:
            try:
                return self.store.prepare_creates(call.principal, items, True)
            except SalusError as exc:
                # Validation names the element; say which entry it was in.
                index = _failed_entry(creates, exc)
                if index is not None:
                    exc.message = f"Bundle.entry[{index}]: {exc.message}"
                raise

        return finish

    def _created(
        self, entries: list[_Entry], stored: list[Stored], call: _Call
    ) -> list[dict[str, Any]]:
        """The responses of ``entries`` whose creates are ``stored`` (in order):
        201 for each create, 200 for an entry that ``ifNoneExist`` matched."""
        results = iter(stored)
        return [
            self._response("201 Created", next(results), call.base_url)
            if entry.method == "POST"
            else {"response": {"status": "200 OK", "location": entry.url}}
            for entry in entries
        ]

    def _authorize(self, call: _Call, res_type: str, interaction: Interaction) -> Any:
        return self.policy.authorize(
            call.principal, AccessRequest(res_type, interaction, call.purpose)
        )

    def _assign_ids(self, conn: Any, entries: list[_Entry], call: _Call) -> dict[str, str]:
        """``urn:uuid:`` full URLs → ``Type/id`` (new ids, or matches of ifNoneExist)."""
        mapping: dict[str, str] = {}
        for entry in entries:
            if entry.method != "POST" or entry.resource is None:
                continue
            res_type = str(entry.resource.get("resourceType", ""))
            target = None
            if entry.if_none_exist:
                found = self._match(conn, res_type, entry.if_none_exist, call)
                if len(found) > 1:
                    raise PreconditionFailed(
                        f"Bundle.entry[{entry.index}]: ifNoneExist matches several resources."
                    )
                if found:
                    target = f"{res_type}/{found[0].res_id}"
                    entry.method = "MATCHED"
            if target is None:
                target = f"{res_type}/{new_id()}"
            if entry.full_url:
                mapping[entry.full_url] = target
            entry.url = target
        return mapping

    def _match(self, conn: Any, res_type: str, query: str, call: _Call) -> list[Stored]:
        params = parse_qsl(query.split("?", 1)[-1], keep_blank_values=True)
        if not params:
            raise InvalidInput("A conditional match needs search parameters.")
        self._authorize(call, res_type, Interaction.SEARCH)
        return call.match(conn, res_type, params)

    def _resolve(
        self, conn: Any, resource: dict[str, Any], ids: dict[str, str], call: _Call
    ) -> None:
        for ref in _walk_references(resource):
            value = ref["reference"]
            if value in ids:
                ref["reference"] = ids[value]
            elif "?" in value and _TYPE.match(value.split("?", 1)[0]):
                res_type = value.split("?", 1)[0]
                found = self._match(conn, res_type, value, call)
                if len(found) != 1:
                    raise PreconditionFailed(
                        f"A conditional reference matches {len(found)} resources, not one."
                    )
                ref["reference"] = f"{res_type}/{found[0].res_id}"
            elif value.startswith("urn:uuid:"):
                raise UnprocessableContent("A urn:uuid reference names no entry of the Bundle.")

    def _apply(self, conn: Any, entry: _Entry, call: _Call, ids: dict[str, str]) -> dict[str, Any]:
        method = entry.method
        if method == "MATCHED":
            return {"response": {"status": "200 OK", "location": f"{entry.url}"}}
        if entry.resource is not None:
            self._resolve(conn, entry.resource, ids, call)
        if method == "POST":
            assert entry.resource is not None  # noqa: S101 - checked when parsed
            res_type, res_id = entry.url.split("/")
            self._authorize(call, res_type, Interaction.CREATE)
            stored = self.store.create(conn, call.principal, entry.resource, res_id=res_id)
            return self._response("201 Created", stored, call.base_url)
        if method in ("PUT", "DELETE"):
            found = _TYPE_ID.match(entry.url.split("?", 1)[0])
            if "?" in entry.url:
                res_type = entry.url.split("?", 1)[0]
                matches = self._match(conn, res_type, entry.url, call)
                if len(matches) > 1:
                    raise PreconditionFailed("The conditional URL matches several resources.")
                if method == "DELETE":
                    if not matches:
                        return {"response": {"status": "204 No Content"}}
                    res_id = matches[0].res_id
                else:
                    res_id = matches[0].res_id if matches else new_id()
                    assert entry.resource is not None  # noqa: S101
                    entry.resource["id"] = res_id
            elif found:
                res_type, res_id = found.group(1), found.group(2)
            else:
                raise InvalidInput("PUT and DELETE need Type/id or a conditional URL.")
            self._authorize(
                call, res_type, Interaction.UPDATE if method == "PUT" else Interaction.DELETE
            )
            if method == "DELETE":
                deleted = self.store.delete(
                    conn, call.principal, res_type, res_id, if_match=entry.if_match
                )
                return {
                    "response": {
                        "status": "204 No Content",
                        **({"etag": deleted.etag} if deleted else {}),
                    }
                }
            assert entry.resource is not None  # noqa: S101
            stored, created = self.store.update(
                conn, call.principal, res_type, res_id, entry.resource, if_match=entry.if_match
            )
            return self._response("201 Created" if created else "200 OK", stored, call.base_url)
        if method in ("GET", "HEAD"):
            found = _TYPE_ID.match(entry.url)
            if not found:
                raise InvalidInput("Only reads (Type/id) are supported as GET entries.")
            decision = self._authorize(call, found.group(1), Interaction.READ)
            if decision.deidentify:
                raise Conflict("De-identified access does not read by id.")
            stored = self.store.read(conn, decision.require(), found.group(1), found.group(2))
            response = self._response("200 OK", stored, call.base_url)
            response["resource"] = stored.resource
            return response
        raise InvalidInput("Unsupported entry method.")

    @staticmethod
    def _response(status: str, stored: Stored, base_url: str) -> dict[str, Any]:
        return {
            "fullUrl": f"{base_url}/{stored.res_type}/{stored.res_id}",
            "response": {
                "status": status,
                "location": stored.location,
                "etag": stored.etag,
                "lastModified": _instant(stored.last_updated),
            },
        }

    # -- batch ---------------------------------------------------------------------------
    def _batch(self, entries: list[_Entry], call: _Call) -> list[dict[str, Any]]:
        responses = []
        for entry in entries:
            try:
                with self._write() as conn:
                    ids = self._assign_ids(conn, [entry], call)
                    responses.append(self._apply(conn, entry, call, ids))
            except SalusError as exc:
                responses.append(
                    {
                        "response": {
                            "status": f"{exc.http_status}",
                            "outcome": exc.to_operation_outcome(),
                        }
                    }
                )
        return responses
