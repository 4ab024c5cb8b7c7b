"""The FHIR REST router, free of HTTP (FHIR R4 http.html).

A route table maps (method, path shape) to handlers. A handler takes a
:class:`FhirRequest` and returns a :class:`FhirResponse`; any
:class:`~salus.errors.SalusError` becomes an OperationOutcome at the edge.
The ASGI adapter (:mod:`salus.fhir.asgi`) deals with content types, headers
and status codes only. Every interaction is authorized by the policy engine
(the filter goes into the SQL) and audited: writes inside their transaction,
reads through the group-committed audit log before the response leaves.
The answers to a stored resource (headers, ``Prefer``, read audit events) are
in :mod:`salus.fhir.responses`, the paged history and ``$everything`` Bundles
in :mod:`salus.fhir.paging`, conditional create/update/delete in
:mod:`salus.fhir.conditional`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from salus.errors import Forbidden, MethodNotAllowed, NotFound, UnprocessableContent
from salus.fhir.auditevents import read_audit_event, search_audit_events
from salus.fhir.bundle import BundleProcessor, Matcher
from salus.fhir.conditional import (
    condition_matcher,
    conditional_create,
    conditional_delete,
    conditional_params,
    conditional_update,
)
from salus.fhir.deidview import Pseudonymizer, deidentify
from salus.fhir.groupcommit import CreateGroup
from salus.fhir.operations import everything, meta_parameters, validate_operation
from salus.fhir.paging import everything_bundle, history_bundle, offset_param
from salus.fhir.patch import apply_patch
from salus.fhir.responses import patient_of, preferred, read_answer, read_event, with_headers
from salus.fhir.rest import (
    FhirRequest,
    FhirResponse,
    count_param,
    form_params,
    if_match,
    parse_json_body,
    since_param,
)
from salus.fhir.searching import Searcher, merge_form
from salus.fhir.store import FhirStore
from salus.security.policy import AccessRequest, Decision, Interaction, PolicyEngine

if TYPE_CHECKING:
    from salus.fhir.profile_registry import ProfileRegistry

__all__ = ["FhirRequest", "FhirResponse", "FhirRouter", "parse_json_body"]

_TYPE = r"(?P<type>[A-Z][A-Za-z]{1,63})"
_ID = r"(?P<id>[A-Za-z0-9\-.]{1,64})"
_VID = r"(?P<vid>[0-9]{1,9})"
#: A search touching more patients than this is audited per patient up to it,
#: plus its match count (bulk access goes through $export, audited per export).
MAX_AUDITED_PATIENTS = 200


Handler = Callable[[FhirRequest, re.Match[str]], FhirResponse]


class FhirRouter:
    def __init__(
        self,
        db: Any,
        store: FhirStore,
        policy: PolicyEngine,
        *,
        searcher: Searcher | None = None,
        pseudonymizer: Pseudonymizer | None = None,
        capabilities: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.db = db
        self.store = store
        #: Concurrent one-by-one creates share a transaction (ADR 21).
        self.creates = CreateGroup(db, store)
        self.policy = policy
        self.searcher = searcher
        self.pseudonymizer = pseudonymizer
        self.capabilities = capabilities
        #: Profiles stored on the server, for $validate (set by install_profiles).
        self.profiles: ProfileRegistry | None = None
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = [
            ("GET", re.compile(r"metadata"), self._metadata),
            ("GET", re.compile(r"AuditEvent"), self._audit_search),
            ("GET", re.compile(rf"AuditEvent/{_ID}"), self._audit_read),
            ("POST", re.compile(r""), self._bundle),
            ("GET", re.compile(r"_history"), self._history),
            ("GET", re.compile(rf"{_TYPE}/_history"), self._history),
            ("GET", re.compile(rf"{_TYPE}/{_ID}/_history/{_VID}"), self._vread),
            ("GET", re.compile(rf"{_TYPE}/{_ID}/_history"), self._history),
            ("POST", re.compile(rf"{_TYPE}/_search"), self._search),
            ("POST", re.compile(rf"{_TYPE}/\$validate"), self._validate),
            ("GET", re.compile(rf"{_TYPE}/{_ID}/\$meta"), self._meta),
            ("GET", re.compile(rf"Patient/{_ID}/\$everything"), self._everything),
            ("GET", re.compile(rf"{_TYPE}/{_ID}"), self._read),
            ("PUT", re.compile(rf"{_TYPE}/{_ID}"), self._update),
            ("DELETE", re.compile(rf"{_TYPE}/{_ID}"), self._delete),
            ("PATCH", re.compile(rf"{_TYPE}/{_ID}"), self._patch),
            ("POST", re.compile(rf"{_TYPE}"), self._create),
            ("GET", re.compile(rf"{_TYPE}"), self._search),
            ("PUT", re.compile(rf"{_TYPE}"), self._conditional_update),
            ("DELETE", re.compile(rf"{_TYPE}"), self._conditional_delete),
        ]

    def handle(self, request: FhirRequest) -> FhirResponse:
        matched_path = False
        for method, pattern, handler in self.routes:
            match = pattern.fullmatch(request.path)
            if match is None:
                continue
            matched_path = True
            if method == request.method:
                return handler(request, match)
        if matched_path:
            raise MethodNotAllowed()
        raise NotFound("No FHIR interaction matches this URL.")

    async def handle_async(self, request: FhirRequest) -> FhirResponse:
        """:meth:`handle` for the event loop: a read or vread by id runs here,
        its one statement on the database's async connections
        (:meth:`Database.fetch_one_async`: no thread hand-off, the loop free
        during the round trip; ADR 11, stop-15 amendment); every other
        interaction runs :meth:`handle` in a worker thread."""
        if request.method == "GET":
            for method, pattern, handler in self.routes:
                match = pattern.fullmatch(request.path) if method == "GET" else None
                if match is None:
                    continue
                if handler == self._read:
                    return await self._read_async(request, match)
                if handler == self._vread:
                    return await self._vread_async(request, match)
                break
        return await asyncio.to_thread(self.handle, request)

    # -- helpers -----------------------------------------------------------------------
    def _decide(self, request: FhirRequest, res_type: str, interaction: Interaction) -> Decision:
        return self.policy.authorize(
            request.principal, AccessRequest(res_type, interaction, request.purpose)
        )

    def _read_by_id(
        self,
        request: FhirRequest,
        res_type: str,
        refusal: str = "De-identified access searches; it does not read by id.",
    ) -> Decision:
        """The decision to read one resource: de-identified access (research,
        public health) is refused (``refusal``); it searches instead."""
        decision = self._decide(request, res_type, Interaction.READ)
        if decision.deidentify:
            raise Forbidden(refusal)
        return decision

    def _view(self, decision: Decision, resource: dict[str, Any] | None) -> dict[str, Any] | None:
        """What a reader may see: de-identified for research and public health."""
        if resource is None or not decision.deidentify:
            return resource
        if self.pseudonymizer is None:
            raise Forbidden("De-identified access is not configured.")
        return deidentify(resource, self.pseudonymizer)

    # -- interactions ------------------------------------------------------------------
    def _audit_search(self, request: FhirRequest, match: re.Match[str]) -> FhirResponse:
        """The audit trail as FHIR AuditEvent (security officers)."""
        decision = self._decide(request, "AuditEvent", Interaction.SEARCH)
        bundle = search_audit_events(self.db, decision.require(), request.query, request.base_url)
        response = FhirResponse(200, bundle)
        response.audit.append(
            read_event(request, decision, "AuditEvent?search", "audit trail searched")
        )
        return response

    def _audit_read(self, request: FhirRequest, match: re.Match[str]) -> FhirResponse:
        decision = self._decide(request, "AuditEvent", Interaction.READ)
        resource = read_audit_event(self.db, decision.require(), match["id"])
        response = FhirResponse(200, resource)
        response.audit.append(
            read_event(request, decision, f"AuditEvent/{match['id']}", "audit event read")
        )
        return response

    def _metadata(self, request: FhirRequest, match: re.Match[str]) -> FhirResponse:
        if self.capabilities is None:
            raise NotFound()
        return FhirResponse(200, self.capabilities())

    def _read(self, request: FhirRequest, match: re.Match[str]) -> FhirResponse:
        res_type, res_id = match["type"], match["id"]
        decision = self._read_by_id(request, res_type)
        stored = self.store.read_from(self.db, decision.require(), res_type, res_id)
        return read_answer(request, decision, stored, f"{res_type}/{res_id}", "read")

    async def _read_async(self, request: FhirRequest, match: re.Match[str]) -> FhirResponse:
        """:meth:`_read` with its statement on the loop (:meth:`handle_async`)."""
        res_type, res_id = match["type"], match["id"]
        decision = self._read_by_id(request, res_type)
        statement, params = self.store._read_query(decision.require(), res_type, res_id)
        row = await self.db.fetch_one_async(statement, params)
        stored = self.store._read_found(row, res_type, res_id)
        return read_answer(request, decision, stored, f"{res_type}/{res_id}", "read")

    def _vread(self, request: FhirRequest, match: re.Match[str]) -> FhirResponse:
        res_type, res_id, vid = match["type"], match["id"], int(match["vid"])
        decision = self._read_by_id(request, res_type)
        stored = self.store.vread_from(self.db, decision.require(), res_type, res_id, vid)
        entity = f"{res_type}/{res_id}/_history/{vid}"
        return read_answer(request, decision, stored, entity, "vread")

    async def _vread_async(self, request: FhirRequest, match: re.Match[str]) -> FhirResponse:
        """:meth:`_vread` with its statement on the loop (:meth:`handle_async`)."""
        res_type, res_id, vid = match["type"], match["id"], int(match["vid"])
        decision = self._read_by_id(request, res_type)
        flt = decision.require()
        statement, params = self.store._vread_query(flt, res_type, res_id, vid)
        row = await self.db.fetch_one_async(statement, params)
        stored = self.store._vread_found(row, res_type, res_id, vid)
        entity = f"{res_type}/{res_id}/_history/{vid}"
        return read_answer(request, decision, stored, entity, "vread")

    def _history(self, request: FhirRequest, match: re.Match[str]) -> FhirResponse:
        groups = match.groupdict()
        res_type, res_id = groups.get("type"), groups.get("id")
        decision = (
            self._decide(request, res_type or "*", Interaction.READ)
            if res_type
            else self._decide(request, "*", Interaction.SEARCH)
        )
        if decision.deidentify:
            raise Forbidden("De-identified access does not include history.")
        count = count_param(request)
        offset = offset_param(request)
        with self.db.read() as conn:
            versions, total = self.store.history(
                conn,
                decision.require(),
                res_type=res_type,
                res_id=res_id,
                since=since_param(request),
                count=count,
                offset=offset,
            )
        base = "/".join(p for p in (res_type, res_id, "_history") if p)
        bundle = history_bundle(request.base_url, base, versions, total, count, offset)
        response = FhirResponse(200, bundle)
        response.audit.append(
            read_event(
                request,
                decision,
                base,
                "history",
                patient_key=res_id if res_type == "Patient" else None,
                detail={"interaction": "history"},
            )
        )
        return response

    def _search(self, request: FhirRequest, match: re.Match[str]) -> FhirResponse:
        """FHIR search.html: GET [type]?… and POST [type]/_search."""
        if self.searcher is None:
            raise NotFound("Search is not available.")
        res_type = match["type"]
        decision = self._decide(request, res_type, Interaction.SEARCH)
        params = list(request.query)
        if request.method == "POST":
            params = merge_form(params, form_params(request))
        lenient = "handling=lenient" in request.headers.get("prefer", "")

        def visible_for(other: str) -> Any:
            included = self.policy.decide(
                request.principal, AccessRequest(other, Interaction.READ, request.purpose)
            )
            return (
                included.filter
                if included.allowed and not (included.deidentify and not decision.deidentify)
                else None
            )

        with self.db.read() as conn:
            result = self.searcher.search(
                conn,
                decision.require(),
                res_type,
                params,
                base_url=request.base_url,
                lenient=lenient,
                visible_for=visible_for,
            )
        bundle = result.bundle
        if decision.deidentify:
            for entry in bundle.get("entry", []):
                resource = entry.get("resource")
                if resource and resource.get("resourceType") != "OperationOutcome":
                    entry["resource"] = self._view(decision, resource)
                    entry.pop("fullUrl", None)
        response = FhirResponse(200, bundle)
        patients: list[str | None] = [
            *sorted({s.patient_key for s in [*result.matches, *result.included] if s.patient_key})
        ]
        for patient in patients[:MAX_AUDITED_PATIENTS] or [None]:
            response.audit.append(
                read_event(
                    request,
                    decision,
                    f"{res_type}?search",
                    "search",
                    patient_key=patient,
                    detail={"interaction": "search-type", "matches": len(result.matches)},
                    flags="deidentified" if decision.deidentify else None,
                )
            )
        return response

    def _matcher(self, request: FhirRequest) -> Matcher:
        """Conditional matching: a search under the caller's own filter."""
        return condition_matcher(
            self.searcher,
            lambda res_type: self._decide(request, res_type, Interaction.SEARCH),
            request.base_url,
        )

    def _validate(self, request: FhirRequest, match: re.Match[str]) -> FhirResponse:
        """resource-operation-validate: never stores anything; ``profile`` (query or
        Parameters) names a StructureDefinition stored on the server."""
        res_type = match["type"]
        self._decide(request, res_type, Interaction.READ)
        outcome = validate_operation(
            res_type,
            parse_json_body(request.body),
            request.param("profile"),
            request.param("mode"),
            self.profiles,
        )
        return FhirResponse(200, outcome)

    def _meta(self, request: FhirRequest, match: re.Match[str]) -> FhirResponse:
        res_type, res_id = match["type"], match["id"]
        decision = self._read_by_id(request, res_type, "De-identified access does not read by id.")
        stored = self.store.read_from(self.db, decision.require(), res_type, res_id)
        response = FhirResponse(200, meta_parameters(stored))
        response.audit.append(
            read_event(
                request,
                decision,
                f"{res_type}/{res_id}/$meta",
                "meta",
                patient_key=patient_of(stored),
            )
        )
        return response

    def _everything(self, request: FhirRequest, match: re.Match[str]) -> FhirResponse:
        """Patient/$everything (patient-operation-everything)."""
        patient_id = match["id"]
        decision = self._read_by_id(
            request, "Patient", "De-identified access does not read single patients."
        )
        flt = decision.require()
        raw_types = request.param("_type")
        types = {t for t in raw_types.split(",") if t} if raw_types else None
        for res_type in types or ():
            self._decide(request, res_type, Interaction.READ)
        count = count_param(request)
        offset = offset_param(request)
        with self.db.read() as conn:
            patient, page, total = everything(
                conn,
                self.store,
                flt,
                patient_id,
                since=since_param(request),
                types=types,
                count=count,
                offset=offset,
            )
        bundle = everything_bundle(
            request.base_url, patient_id, patient, page, total, count, offset
        )
        response = FhirResponse(200, bundle)
        response.audit.append(
            read_event(
                request,
                decision,
                f"Patient/{patient_id}/$everything",
                "$everything",
                patient_key=patient_id,
                detail={"interaction": "operation", "entries": len(bundle["entry"])},
            )
        )
        return response

    def _bundle(self, request: FhirRequest, match: re.Match[str]) -> FhirResponse:
        """Batch and transaction (http.html#transaction)."""
        bundle = parse_json_body(request.body)
        processor = BundleProcessor(self.db, self.store, self.policy)
        result = processor.process(
            bundle, request.principal, request.purpose, request.base_url, self._matcher(request)
        )
        return FhirResponse(200, result)

    def _create(self, request: FhirRequest, match: re.Match[str]) -> FhirResponse:
        res_type = match["type"]
        self._decide(request, res_type, Interaction.CREATE)
        resource = parse_json_body(request.body)
        if resource.get("resourceType") != res_type:
            raise UnprocessableContent(
                "The resource type does not match the URL.", expression=["resourceType"]
            )
        condition = request.headers.get("if-none-exist")
        batch = self.store.prepare_creates(request.principal, [(resource, None)])
        if not condition:
            [stored] = self.creates.commit(batch)
            return preferred(request, stored, 201)
        with self.db.write() as conn:  # conditional create (http.html#ccreate)
            stored, created = conditional_create(
                conn, self.store, self._matcher(request), res_type, condition, batch
            )
        if not created:
            return with_headers(stored, request, 200, None)
        return preferred(request, stored, 201)

    def _update(self, request: FhirRequest, match: re.Match[str]) -> FhirResponse:
        res_type, res_id = match["type"], match["id"]
        resource = parse_json_body(request.body)
        self._decide(request, res_type, Interaction.UPDATE)
        stored, created = self.store.update_in(
            self.db,
            request.principal,
            res_type,
            res_id,
            resource,
            if_match=if_match(request.headers),
        )
        return preferred(request, stored, 201 if created else 200)

    def _patch(self, request: FhirRequest, match: re.Match[str]) -> FhirResponse:
        """http.html#patch: JSON Patch or FHIRPath Patch; the result is validated and
        stored as a new version (If-Match honoured)."""
        res_type, res_id = match["type"], match["id"]
        decision = self._decide(request, res_type, Interaction.UPDATE)
        with self.db.write() as conn:
            current = self.store.read(conn, decision.require(), res_type, res_id)
            assert current.resource is not None  # noqa: S101 - read raises for deletions
            patched = apply_patch(
                current.resource, request.body or b"", request.headers.get("content-type", "")
            )
            stored, _ = self.store.update(
                conn,
                request.principal,
                res_type,
                res_id,
                patched,
                if_match=if_match(request.headers),
            )
        return preferred(request, stored, 200)

    def _conditional_update(self, request: FhirRequest, match: re.Match[str]) -> FhirResponse:
        """http.html#cond-update: PUT [type]?search — create, update the one match, or 412."""
        res_type = match["type"]
        resource = parse_json_body(request.body)
        self._decide(request, res_type, Interaction.UPDATE)
        params = conditional_params(request.query)
        with self.db.write() as conn:
            stored, created = conditional_update(
                conn,
                self.store,
                request.principal,
                self._matcher(request),
                res_type,
                params,
                resource,
                request.headers,
            )
        return preferred(request, stored, 201 if created else 200)

    def _conditional_delete(self, request: FhirRequest, match: re.Match[str]) -> FhirResponse:
        """http.html#cdelete (single): delete the one match; 412 if several."""
        res_type = match["type"]
        self._decide(request, res_type, Interaction.DELETE)
        params = conditional_params(request.query)
        with self.db.write() as conn:
            conditional_delete(
                conn, self.store, request.principal, self._matcher(request), res_type, params
            )
        return FhirResponse(204)

    def _delete(self, request: FhirRequest, match: re.Match[str]) -> FhirResponse:
        res_type, res_id = match["type"], match["id"]
        self._decide(request, res_type, Interaction.DELETE)
        with self.db.write() as conn:
            stored = self.store.delete(
                conn, request.principal, res_type, res_id, if_match=if_match(request.headers)
            )
        if stored is None:
            return FhirResponse(204)
        return FhirResponse(204, None, {"ETag": stored.etag})
