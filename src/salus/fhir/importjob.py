"""The job of a FHIR Bulk Data import (see :mod:`salus.fhir.bulkimport`).

It runs as the principal that asked (its organization owns the records):
each NDJSON line is parsed and checked against the policy engine
(``create``, or ``update`` for an id that already exists), and lines are
written in batches, one transaction each with one insert per table
(:meth:`~salus.fhir.store.FhirStore.prepare_creates` and
:meth:`~salus.fhir.store.FhirStore.commit_creates`, as ``salus fhir import``
does). A batch that fails is retried line by line, so bad lines are rejected
with their input and line number and the rest is imported.

Each transaction also writes the import's ``cursor`` (the last line whose
outcome is committed) with the counts and errors up to it, so a job that dies
is resumed by its retry where it stopped: no line is imported twice, none is
lost. Errors never quote resource content (validation messages name elements
by FHIRPath, never their values).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from salus import jsoncodec
from salus.audit.events import AuditEvent
from salus.db.keys import pairs_in
from salus.db.tables import bulk_imports, fhir_resources
from salus.db.types import utcnow
from salus.errors import Forbidden, SalusError, Unavailable
from salus.fhir.bulk import principal_from_payload
from salus.fhir.bulkimport import (
    ACTIVE,
    IMPORT_JOB,
    MAX_ERRORS,
    MAX_LINE_BYTES,
    BulkImporter,
    ImportInput,
    ImportState,
    ndjson_lines,
)
from salus.fhir.search.resource_types import is_resource_type
from salus.jobs import JobContext
from salus.jobs.queue import describe_error
from salus.security.policy import AccessRequest, Interaction
from salus.security.principal import Principal, Purpose

if TYPE_CHECKING:
    from salus.services import Services

__all__ = ["ImportJob", "register_import_jobs"]


class _Cancelled(Exception):
    """Raised inside a batch's transaction when the import was cancelled meanwhile."""


def _permanent(exc: BaseException) -> bool:
    return isinstance(exc, SalusError) and not exc.retryable and exc.http_status < 500


@dataclass(slots=True)
class _Line:
    input: int
    line: int
    resource: dict[str, Any]

    @property
    def key(self) -> tuple[str, str] | None:
        res_id = self.resource.get("id")
        return (self.resource["resourceType"], res_id) if isinstance(res_id, str) else None


Position = tuple[int, int]


@dataclass(slots=True)
class _Run:
    """One run of the job: who, where it stands, what it did.

    ``counts`` and ``errors`` are what is written in ``bulk_imports``; rejected
    lines wait in ``pending`` until a transaction writes a cursor at or past
    them, so a run that dies leaves no count or error that its retry, starting
    at the cursor, would add again.
    """

    import_id: str
    ctx: JobContext
    principal: Principal
    purpose: Purpose | None
    inputs: list[ImportInput]
    #: (input index, line): the last line whose outcome is written.
    cursor: Position
    counts: list[dict[str, int]]
    errors: list[dict[str, Any]]
    pending: list[tuple[Position, dict[str, Any]]] = field(default_factory=list)
    allowed: dict[tuple[str, Interaction], str | None] = field(default_factory=dict)

    def reject(
        self,
        index: int,
        line: int,
        reason: str,
        expression: str | None = None,
        code: str = "invalid",
    ) -> None:
        """Record a rejected line (``code``: an OperationOutcome issue type)."""
        error: dict[str, Any] = {"input": index, "line": line, "code": code, "reason": reason[:500]}
        if expression:
            error["expression"] = expression[:200]
        self.pending.append(((index, line), error))

    def advanced(
        self, cursor: Position, written: Iterable[tuple[int, str]] = ()
    ) -> tuple[list[dict[str, int]], list[dict[str, Any]], list[tuple[Position, dict[str, Any]]]]:
        """Counts, errors and pending rejections once ``cursor`` and the lines
        ``written`` ((input, "created" | "updated")) are committed."""
        counts = [dict(c) for c in self.counts]
        for index, outcome in written:
            counts[index][outcome] += 1
        done = sorted((p for p in self.pending if p[0] <= cursor), key=lambda p: p[0])
        errors = list(self.errors)
        for (index, _), error in done:
            counts[index]["rejected"] += 1
            if len(errors) < MAX_ERRORS:
                errors.append(error)
        return counts, errors, [p for p in self.pending if p[0] > cursor]


class ImportJob:
    """The job handler (kind :data:`~salus.fhir.bulkimport.IMPORT_JOB`)."""

    def __init__(self, importer: BulkImporter) -> None:
        self.importer = importer
        self.services = importer.services
        self.batch_size = importer.batch_size

    def run(self, ctx: JobContext) -> None:
        """The job handler: import from the cursor on, then record the result."""
        import_id = str(ctx.payload["import"])
        principal = principal_from_payload(ctx.payload["principal"])
        found = self.importer.get(import_id)
        if found.status.value not in ACTIVE:
            return  # cancelled, or finished by an earlier attempt
        values: dict[str, Any] = {}
        if found.transaction_time is None:
            values["transaction_time"] = utcnow()
        if not self.importer.set_state(import_id, ImportState.IN_PROGRESS, **values):
            return
        with self.services.db.read() as conn:
            query = select(bulk_imports.c.cursor).where(bulk_imports.c.id == import_id)
            cursor = conn.execute(query).scalar_one() or [0, 0]
        result = found.result or {}
        run = _Run(
            import_id,
            ctx,
            principal,
            Purpose(found.purpose) if found.purpose else None,
            found.inputs,
            (int(cursor[0]), int(cursor[1])),
            [dict(c) for c in result.get("counts") or []]
            or [{"created": 0, "updated": 0, "rejected": 0} for _ in found.inputs],
            list(result.get("errors") or []),
        )
        try:
            self._import(run)
        except _Cancelled:
            return
        except Exception as exc:
            if _permanent(exc) or ctx.job.attempts >= ctx.job.max_attempts:
                self.importer.set_state(
                    import_id, ImportState.FAILED, error=describe_error(exc)[:2000]
                )
            raise
        end = (len(run.inputs), 0)
        counts, errors, _ = run.advanced(end)
        run.counts, run.errors = counts, errors
        with self.services.db.write() as conn:
            done = self.importer.set_state(
                import_id,
                ImportState.COMPLETED,
                conn=conn,
                cursor=list(end),
                result={"counts": counts, "errors": errors},
            )
            if done:
                self.services.audit.append(conn, [self._completed_event(run)])
        if done:
            self.services.db.analyze()  # the planner's statistics after a bulk change

    def _completed_event(self, run: _Run) -> AuditEvent:
        return AuditEvent.for_principal(
            run.principal,
            category="rest",
            action="E",
            entity=f"$import/{run.import_id}",
            purpose=run.purpose,
            description="bulk import completed",
            detail={
                "import": run.import_id,
                "inputs": len(run.inputs),
                "created": sum(c["created"] for c in run.counts),
                "updated": sum(c["updated"] for c in run.counts),
                "rejected": sum(c["rejected"] for c in run.counts),
            },
        )

    def _import(self, run: _Run) -> None:
        for index, item in enumerate(run.inputs):
            if index < run.cursor[0]:
                continue
            skip = run.cursor[1] if index == run.cursor[0] else 0
            batch: list[_Line] = []
            for number, raw in ndjson_lines(self.services.blobs.stream(item.digest)):
                if number <= skip:
                    continue
                line = self._parse(run, index, number, raw, item.type)
                if line is None:
                    continue
                batch.append(line)
                if len(batch) >= self.batch_size:
                    self._flush(run, batch)
                    batch = []
            self._flush(run, batch)

    def _allowed(self, run: _Run, res_type: str, interaction: Interaction) -> str | None:
        """None when allowed, else the reason (decided once per type and run)."""
        key = (res_type, interaction)
        if key not in run.allowed:
            decision = self.services.policy.decide(
                run.principal, AccessRequest(res_type, interaction, run.purpose)
            )
            run.allowed[key] = None if decision.allowed else decision.reason
        return run.allowed[key]

    def _parse(
        self, run: _Run, index: int, number: int, raw: bytes | None, expected: str | None
    ) -> _Line | None:
        if raw is None:
            run.reject(
                index, number, f"The line is longer than {MAX_LINE_BYTES} bytes.", code="too-costly"
            )
            return None
        try:
            resource = jsoncodec.loads(raw.decode("utf-8-sig"), strict=True)
        except ValueError:  # UnicodeDecodeError is one too
            run.reject(index, number, "The line is not valid JSON (UTF-8).")
            return None
        res_type = resource.get("resourceType") if isinstance(resource, dict) else None
        if not isinstance(res_type, str) or not is_resource_type(res_type):
            run.reject(
                index, number, "The line is not a FHIR resource of a known type.", code="structure"
            )
            return None
        if expected is not None and res_type != expected:
            run.reject(index, number, f"The input holds {expected} resources only.")
            return None
        res_id = resource.get("id")
        if res_id is not None and not isinstance(res_id, str):
            run.reject(index, number, "The resource id must be a string.", f"{res_type}.id")
            return None
        refused = self._allowed(run, res_type, Interaction.CREATE)
        if refused is not None:
            reason = f"You may not create {res_type} resources: {refused}"
            run.reject(index, number, reason, code="forbidden")
            return None
        return _Line(index, number, resource)

    def _flush(self, run: _Run, batch: list[_Line]) -> None:
        """Write a batch in one transaction with the cursor; line by line if it fails."""
        if not batch:
            return
        if not run.ctx.heartbeat():
            raise Unavailable("The import job lost its lease to another worker.")
        try:
            self._write(run, batch)
        except SalusError as exc:
            if len(batch) == 1:
                self._reject_error(run, batch[0], exc)
                return
            for line in batch:  # find the bad ones: one transaction each
                try:
                    self._write(run, [line])
                except SalusError as one:
                    self._reject_error(run, line, one)

    @staticmethod
    def _reject_error(run: _Run, line: _Line, exc: SalusError) -> None:
        issues = getattr(exc, "issues", None)
        expression = exc.expression[0] if exc.expression else None
        code = exc.issue_code
        if issues:
            expression = getattr(issues[0], "expression", expression)
            code = getattr(issues[0], "code", code)
        run.reject(line.input, line.line, exc.message, expression, code)

    def _write(self, run: _Run, batch: list[_Line]) -> None:
        """Create or update the batch's resources and write the cursor (its last
        line) in one transaction; raises :class:`_Cancelled` when cancelled."""
        store = self.services.fhir_store
        keys = [key for key in (line.key for line in batch) if key is not None]
        existing: set[tuple[str, str]] = set()
        if keys:
            with self.services.db.read() as conn:
                rows = conn.execute(
                    select(fhir_resources.c.res_type, fhir_resources.c.res_id).where(
                        pairs_in(fhir_resources.c.res_type, fhir_resources.c.res_id, keys)
                    )
                ).all()
            existing = {(str(t), str(i)) for t, i in rows}
        creates = [line for line in batch if line.key not in existing]
        updates = [line for line in batch if line.key is not None and line.key in existing]
        for line in updates:
            refused = self._allowed(run, line.resource["resourceType"], Interaction.UPDATE)
            if refused is not None:
                raise Forbidden(f"You may not update these resources: {refused}")
        prepared = store.prepare_creates(
            run.principal, [(line.resource, line.resource.get("id")) for line in creates]
        )
        cursor = (batch[-1].input, batch[-1].line)
        written = [(line.input, "created") for line in creates]
        written += [(line.input, "updated") for line in updates]
        counts, errors, pending = run.advanced(cursor, written)
        with self.services.db.write() as conn:
            store.commit_creates(conn, prepared)
            for line in updates:
                resource = line.resource
                store.update(
                    conn, run.principal, resource["resourceType"], resource["id"], resource
                )
            done = sum(c["created"] + c["updated"] + c["rejected"] for c in counts)
            progress = f"{done} lines; input {cursor[0] + 1} of {len(run.inputs)}"
            statement = (
                update(bulk_imports)
                .where(
                    bulk_imports.c.id == run.import_id,
                    bulk_imports.c.status == ImportState.IN_PROGRESS.value,
                )
                .values(
                    cursor=list(cursor),
                    result={"counts": counts, "errors": errors},
                    progress=progress[:200],
                    updated_at=utcnow(),
                )
            )
            if conn.execute(statement).rowcount != 1:
                raise _Cancelled()  # rolls the batch back
        run.cursor, run.counts, run.errors, run.pending = cursor, counts, errors, pending


def register_import_jobs(services: Services, importer: BulkImporter | None = None) -> None:
    """Register the import job handler (kind :data:`IMPORT_JOB`) with ``services``."""
    services.job_handlers.register(IMPORT_JOB, ImportJob(importer or BulkImporter(services)).run)
