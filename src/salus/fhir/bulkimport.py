"""FHIR Bulk Data import, free of HTTP: NDJSON into the FHIR store as a job.

Follows the asynchronous request pattern of FHIR R4 (``async.html``) and the
Bulk Data export IG v2 (kick-off, status polling, cancellation), with the
inputs of the draft Bulk Data import operation (a ``Parameters`` resource with
``inputFormat`` and ``input`` = ``type`` + ``url``).

Inputs are blobs of this server's encrypted blob store only: NDJSON sent in
the kick-off body, or files uploaded beforehand to ``$import-file`` (or
produced by one of the caller's own ``$export`` runs) and named by URL. Salus
never fetches other URLs: a server that fetched whatever URL an API client
names could be made to read internal services or cloud metadata endpoints on
the client's behalf (server-side request forgery), and would hold patient data
fetched from a place nobody vouched for.

A job (:data:`IMPORT_JOB`, :mod:`salus.fhir.importjob`) does the work as
the principal that asked, in batches of one transaction each (as ``salus
fhir import`` does), and resumes where it stopped when it is retried.
Results carry counts and, per rejected line, the input, the line and a
reason that never quotes resource content. Only the principal that asked (or
a SYSTEM principal) sees an import or an uploaded file.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection, RowMapping

from salus.db.tables import bulk_imports
from salus.db.types import utcnow
from salus.errors import (
    Forbidden,
    InvalidInput,
    NotFound,
    RateLimited,
)
from salus.fhir.bulk import principal_payload
from salus.fhir.search.resource_types import RESOURCE_TYPES, is_resource_type
from salus.jobs import JobStatus
from salus.security.policy import AccessRequest, Interaction
from salus.security.principal import Principal, PrincipalKind, Purpose

if TYPE_CHECKING:
    from salus.services import Services

__all__ = [
    "IMPORT_JOB",
    "NDJSON_TYPES",
    "BulkImporter",
    "Import",
    "ImportInput",
    "ImportState",
    "UploadedFile",
    "ndjson_lines",
    "parse_import_parameters",
]

#: The job kind that runs an import.
IMPORT_JOB = "fhir.import"
#: Media types of NDJSON input (``inputFormat``, the kick-off body's Content-Type).
NDJSON_TYPES = frozenset(
    {"application/fhir+ndjson", "application/ndjson", "application/x-ndjson", "ndjson"}
)
#: Resources per transaction (the batch size of ``salus fhir import``).
BATCH_SIZE = 500
#: Imports a principal may have accepted or in progress at once.
MAX_ACTIVE = 5
#: Inputs one import may name.
MAX_INPUTS = 1000
#: Per-line errors kept in the result (the counts are always complete).
MAX_ERRORS = 1000
#: Longest NDJSON line read (a longer one is rejected without being held).
MAX_LINE_BYTES = 64 * 1024 * 1024

_FILE = "file"
_IMPORT = "import"
_FILE_PATH = "$import-file/"
_EXPORT_FILE_PATH = "$export-file/"


class ImportState(StrEnum):
    ACCEPTED = "accepted"
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    #: An uploaded file, ready to be named as an input.
    AVAILABLE = "available"


ACTIVE = (ImportState.ACCEPTED.value, ImportState.IN_PROGRESS.value)


@dataclass(frozen=True, slots=True)
class ImportInput:
    """One NDJSON input: where the caller said it was, and the blob it is."""

    url: str
    digest: str
    size: int
    #: ``input.type``: every line must be of this type (None: any type).
    type: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "digest": self.digest, "size": self.size, "type": self.type}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImportInput:
        return cls(str(data["url"]), str(data["digest"]), int(data["size"]), data.get("type"))


@dataclass(frozen=True, slots=True)
class UploadedFile:
    id: str
    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class Import:
    """A ``bulk_imports`` row of kind ``import``."""

    id: str
    owner_kind: str
    owner_id: str
    owner_org: str
    status: ImportState
    request_url: str
    inputs: list[ImportInput]
    purpose: str | None
    job_id: int | None
    progress: str | None
    transaction_time: datetime | None
    error: str | None
    result: dict[str, Any] | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: RowMapping) -> Import:
        params = row["params"] or {}
        return cls(
            id=str(row["id"]),
            owner_kind=str(row["owner_kind"]),
            owner_id=str(row["owner_id"]),
            owner_org=str(row["owner_org"]),
            status=ImportState(row["status"]),
            request_url=str(row["request_url"]),
            inputs=[ImportInput.from_json(item) for item in params.get("inputs") or []],
            purpose=params.get("purpose"),
            job_id=row["job_id"],
            progress=row["progress"],
            transaction_time=row["transaction_time"],
            error=row["error"],
            result=row["result"],
            created_at=row["created_at"],
        )


def _owned(row: Mapping[str, Any] | RowMapping, principal: Principal) -> bool:
    """The principal that created it; a SYSTEM principal sees every row."""
    if principal.kind is PrincipalKind.SYSTEM:
        return True
    return bool(row["owner_kind"] == principal.kind.value and row["owner_id"] == principal.id)


def ndjson_lines(chunks: Iterable[bytes | bytearray]) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line) of NDJSON bytes, blank lines skipped; a line longer
    than :data:`MAX_LINE_BYTES` comes as ``None`` (FHIR Bulk Data: one resource
    per line, ``\\n`` or ``\\r\\n`` separated)."""
    number = 0
    pending = bytearray()
    too_long = False
    for chunk in chunks:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                if not too_long:
                    pending += chunk[start:]
                    if len(pending) > MAX_LINE_BYTES:
                        too_long = True
                        pending.clear()
                break
            number += 1
            if too_long:
                yield number, None
            else:
                pending += chunk[start:end]
                if len(pending) > MAX_LINE_BYTES:
                    yield number, None
                elif pending.strip():
                    yield number, bytes(pending)
            pending.clear()
            too_long = False
            start = end + 1
    if too_long:
        yield number + 1, None
    elif pending.strip():
        yield number + 1, bytes(pending)


def _value(part: Mapping[str, Any]) -> Any:
    for key, value in part.items():
        if key.startswith("value"):
            return value
    return None


def parse_import_parameters(body: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    """The ``input`` (url, type) pairs of an import ``Parameters`` resource.

    ``inputFormat`` must be NDJSON; ``inputSource`` and ``storageDetail`` are
    accepted and ignored (inputs are always this server's files).
    """
    if body.get("resourceType") != "Parameters":
        raise InvalidInput("$import takes a Parameters resource.", expression=["resourceType"])
    inputs: list[tuple[str, str | None]] = []
    for index, parameter in enumerate(body.get("parameter") or []):
        where = f"Parameters.parameter[{index}]"
        if not isinstance(parameter, Mapping):
            raise InvalidInput("A parameter must be an object.", expression=[where])
        name = parameter.get("name")
        if name == "inputFormat":
            if str(_value(parameter)).replace(" ", "+") not in NDJSON_TYPES:
                raise InvalidInput(
                    "Only application/fhir+ndjson input is supported.", expression=[where]
                )
        elif name == "input":
            url: str | None = None
            res_type: str | None = None
            for part in parameter.get("part") or []:
                if not isinstance(part, Mapping):
                    continue
                if part.get("name") == "url":
                    value = _value(part)
                    url = value if isinstance(value, str) else None
                elif part.get("name") == "type":
                    value = _value(part)
                    if not isinstance(value, str) or not is_resource_type(value):
                        raise InvalidInput(
                            "input.type names an unknown resource type.",
                            expression=[f"{where}.part"],
                        )
                    res_type = value
            if not url:
                raise InvalidInput("Each input needs a url.", expression=[f"{where}.part"])
            inputs.append((url, res_type))
        elif name in ("inputSource", "storageDetail", "mode"):
            continue
        else:
            raise InvalidInput("$import does not support this parameter.", expression=[where])
    if not inputs:
        raise InvalidInput("$import needs at least one input.", expression=["Parameters"])
    if len(inputs) > MAX_INPUTS:
        raise InvalidInput(f"$import takes at most {MAX_INPUTS} inputs.")
    return inputs


class BulkImporter:
    """Uploads, kick-off, status, cancellation, and the job that imports."""

    def __init__(
        self,
        services: Services,
        *,
        batch_size: int = BATCH_SIZE,
        max_active: int = MAX_ACTIVE,
    ) -> None:
        self.services = services
        self.batch_size = batch_size
        self.max_active = max_active

    # -- decisions ---------------------------------------------------------------------
    def creatable(self, principal: Principal, purpose: Purpose | None) -> list[str]:
        """The resource types ``principal`` may create; refused when none."""
        types = [
            res_type
            for res_type in RESOURCE_TYPES
            if self.services.policy.decide(
                principal, AccessRequest(res_type, Interaction.CREATE, purpose)
            ).allowed
        ]
        if not types:
            raise Forbidden("You may not create resources, so you may not import them.")
        return types

    # -- uploads -----------------------------------------------------------------------
    def upload(
        self, principal: Principal, chunks: Iterable[bytes], request_url: str
    ) -> UploadedFile:
        """Store NDJSON in the encrypted blob store and record it for ``principal``;
        committed before it is acknowledged."""
        ref = self.services.blobs.put(chunks)
        if ref.size == 0:
            raise InvalidInput("The NDJSON file is empty.")
        file_id = str(uuid.uuid4())
        now = utcnow()
        with self.services.db.write() as conn:
            conn.execute(
                insert(bulk_imports).values(
                    id=file_id,
                    kind=_FILE,
                    owner_kind=principal.kind.value,
                    owner_id=principal.id,
                    owner_org=principal.org_id,
                    status=ImportState.AVAILABLE.value,
                    request_url=request_url,
                    params={"digest": ref.digest, "size": ref.size},
                    created_at=now,
                    updated_at=now,
                )
            )
        return UploadedFile(file_id, ref.digest, ref.size)

    def uploaded(self, principal: Principal, file_id: str) -> UploadedFile:
        """An uploaded file of ``principal`` (404 for anybody else's)."""
        if len(file_id) > 36:
            raise NotFound("No such import file.")
        with self.services.db.read() as conn:
            row = (
                conn.execute(
                    select(bulk_imports).where(
                        bulk_imports.c.id == file_id, bulk_imports.c.kind == _FILE
                    )
                )
                .mappings()
                .first()
            )
        if row is None or not _owned(row, principal):
            raise NotFound("No such import file.")
        return UploadedFile(file_id, str(row["params"]["digest"]), int(row["params"]["size"]))

    def resolve(self, principal: Principal, url: str, fhir_base: str) -> tuple[str, int]:
        """The blob an input URL names: a file of ``principal`` on this server.

        ``[base]/$import-file/{id}`` (absolute, or relative to the FHIR base)
        or ``[base]/$export-file/{id}/{n}`` of one of the caller's exports.
        Anything else is refused: Salus does not fetch URLs (see the module
        docstring).
        """
        base = urlsplit(fhir_base)
        parts = urlsplit(url.strip())
        refused = InvalidInput(
            "An input url must name a file uploaded to $import-file on this server; "
            "other URLs are not fetched.",
            expression=["input.url"],
        )
        path = unquote(parts.path)
        prefix = base.path.rstrip("/") + "/"
        if parts.scheme or parts.netloc:
            same = (parts.scheme.lower(), parts.netloc.lower()) == (base.scheme, base.netloc)
            if not same or not path.startswith(prefix):
                raise refused
            path = path[len(prefix) :]
        elif path.startswith("/"):
            if not path.startswith(prefix):
                raise refused
            path = path[len(prefix) :]
        if parts.query or parts.fragment:
            raise refused
        if path.startswith(_FILE_PATH) and "/" not in path[len(_FILE_PATH) :]:
            found = self.uploaded(principal, path[len(_FILE_PATH) :])
            return found.digest, found.size
        if path.startswith(_EXPORT_FILE_PATH):
            export_id, _, index = path[len(_EXPORT_FILE_PATH) :].partition("/")
            if index.isdigit() and len(index) < 10:
                from salus.fhir.bulk import BulkExporter

                _, output = BulkExporter(self.services).file(principal, export_id, int(index))
                return output.digest, output.size
        raise refused

    def check_capacity(self, principal: Principal) -> None:
        """429 when ``principal`` already has :data:`MAX_ACTIVE` imports under way."""
        with self.services.db.read() as conn:
            self._check_capacity(conn, principal)

    def _check_capacity(self, conn: Connection, principal: Principal) -> None:
        active = conn.execute(
            select(func.count())
            .select_from(bulk_imports)
            .where(
                bulk_imports.c.owner_kind == principal.kind.value,
                bulk_imports.c.owner_id == principal.id,
                bulk_imports.c.kind == _IMPORT,
                bulk_imports.c.status.in_(ACTIVE),
            )
        ).scalar_one()
        if int(active) >= self.max_active:
            raise RateLimited("Too many imports in progress.", headers={"Retry-After": "60"})

    # -- kick-off ----------------------------------------------------------------------
    def kick_off(
        self,
        principal: Principal,
        purpose: Purpose | None,
        inputs: Sequence[ImportInput],
        request_url: str,
    ) -> Import:
        creatable = set(self.creatable(principal, purpose))
        for item in inputs:
            if item.type is not None and item.type not in creatable:
                raise Forbidden(f"You may not create {item.type} resources.")
        import_id = str(uuid.uuid4())
        now = utcnow()
        params = {
            "inputs": [item.to_json() for item in inputs],
            "purpose": purpose.value if purpose else None,
        }
        counts = [{"created": 0, "updated": 0, "rejected": 0} for _ in inputs]
        with self.services.db.write() as conn:
            self._check_capacity(conn, principal)
            job_id = self.services.jobs.enqueue(
                IMPORT_JOB,
                {"import": import_id, "principal": principal_payload(principal)},
                conn=conn,
                tenant=principal.org_id,
            )
            conn.execute(
                insert(bulk_imports).values(
                    id=import_id,
                    kind=_IMPORT,
                    owner_kind=principal.kind.value,
                    owner_id=principal.id,
                    owner_org=principal.org_id,
                    status=ImportState.ACCEPTED.value,
                    request_url=request_url,
                    params=params,
                    job_id=job_id,
                    progress="accepted",
                    cursor=[0, 0],
                    result={"counts": counts, "errors": []},
                    created_at=now,
                    updated_at=now,
                )
            )
        return self.get(import_id)

    # -- status and cancellation -------------------------------------------------------
    def get(self, import_id: str) -> Import:
        with self.services.db.read() as conn:
            row = (
                conn.execute(
                    select(bulk_imports).where(
                        bulk_imports.c.id == import_id, bulk_imports.c.kind == _IMPORT
                    )
                )
                .mappings()
                .first()
            )
        if row is None:
            raise NotFound("No such import.")
        return Import.from_row(row)

    def owned(self, principal: Principal, import_id: str) -> Import:
        """The import if ``principal`` may see it; 404 otherwise (and once cancelled)."""
        if len(import_id) > 36:
            raise NotFound("No such import.")
        found = self.get(import_id)
        owner = {"owner_kind": found.owner_kind, "owner_id": found.owner_id}
        if not _owned(owner, principal) or found.status is ImportState.CANCELLED:
            raise NotFound("No such import.")
        if found.status.value in ACTIVE and found.job_id is not None:
            found = self._notice_lost_job(found)
        return found

    def _notice_lost_job(self, found: Import) -> Import:
        """A job that died for good (or vanished) fails the import."""
        assert found.job_id is not None  # noqa: S101 - checked by the caller
        try:
            job = self.services.jobs.get(found.job_id)
            error = (job.last_error or "job-dead") if job.status is JobStatus.DEAD else None
        except NotFound:
            error = "job-missing: the import job no longer exists"
        if error is None:
            return found
        self.set_state(found.id, ImportState.FAILED, error=error[:2000])
        return self.get(found.id)

    def cancel(self, principal: Principal, import_id: str) -> Import:
        """Later status requests answer 404; what was committed stays imported."""
        found = self.owned(principal, import_id)
        self.set_state(found.id, ImportState.CANCELLED, only_from=None)
        return self.get(found.id)

    def set_state(
        self,
        import_id: str,
        state: ImportState,
        *,
        only_from: Sequence[str] | None = ACTIVE,
        conn: Connection | None = None,
        **values: Any,
    ) -> bool:
        statement = update(bulk_imports).where(
            bulk_imports.c.id == import_id, bulk_imports.c.kind == _IMPORT
        )
        if only_from is not None:
            statement = statement.where(bulk_imports.c.status.in_(list(only_from)))
        values.setdefault("progress", "starting" if state is ImportState.IN_PROGRESS else None)
        statement = statement.values(status=state.value, updated_at=utcnow(), **values)
        if conn is not None:
            return bool(conn.execute(statement).rowcount == 1)
        with self.services.db.write() as own:
            return bool(own.execute(statement).rowcount == 1)
