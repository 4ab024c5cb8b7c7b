"""``ViewDefinition/$run``, free of HTTP (SQL-on-FHIR v2 §"Operations: $run").

The view is applied synchronously to the live FHIR store under the caller's
access: the policy engine decides ``search`` on the view's resource type
(refused: 403) and its filter runs inside the SQL; a caller whose access is
de-identified (researchers, authority analysts, research and public-health
purposes) gets the view applied to de-identified resources, so no view can
pull a name, an identifier or a real id out of the store for them. Inline
``resource`` parameters are transformed as given, with no store access.
Parameters: ``_format`` (json, ndjson, csv, parquet), ``header`` (csv),
``_limit`` (capped by ``SALUS_WAREHOUSE_RUN_MAX_ROWS``), ``patient`` and
``group`` (identified callers only), ``_since``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from salus.errors import Forbidden, InvalidInput, NotAcceptable
from salus.fhir.bulk import group_members
from salus.fhir.deidview import deidentify
from salus.security.policy import AccessRequest, Interaction
from salus.security.principal import Principal, Purpose
from salus.warehouse.parquet import rows_to_table, to_parquet
from salus.warehouse.source import pages
from salus.warehouse.sqlonfhir import View

if TYPE_CHECKING:
    from salus.services import Services

__all__ = [
    "FORMATS",
    "Access",
    "RunRequest",
    "RunResult",
    "media_format",
    "render",
    "run_view",
    "view_batches",
]

#: ``_format`` codes (SQL-on-FHIR OutputFormatCodes and media types) → (format, media type).
FORMATS = {
    "json": ("json", "application/json"),
    "application/json": ("json", "application/json"),
    "ndjson": ("ndjson", "application/x-ndjson"),
    "application/x-ndjson": ("ndjson", "application/x-ndjson"),
    "application/ndjson": ("ndjson", "application/x-ndjson"),
    "csv": ("csv", "text/csv"),
    "text/csv": ("csv", "text/csv"),
    "parquet": ("parquet", "application/vnd.apache.parquet"),
    "application/vnd.apache.parquet": ("parquet", "application/vnd.apache.parquet"),
}


@dataclass(frozen=True, slots=True)
class RunRequest:
    view: View
    limit: int | None = None
    patients: tuple[str, ...] | None = None
    group: str | None = None
    since: datetime | None = None
    resources: tuple[dict[str, Any], ...] | None = None


@dataclass(frozen=True, slots=True)
class RunResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    deidentified: bool
    purpose: Purpose | None
    truncated: bool


@dataclass(frozen=True, slots=True)
class Access:
    """What the policy decided for a run: de-identified or not, under which purpose."""

    deidentified: bool
    purpose: Purpose | None


def view_batches(
    services: Services, principal: Principal, purpose: Purpose | None, request: RunRequest
) -> tuple[Access, Iterator[list[tuple[Any, ...]]]]:
    """The decision, and the view's rows page by page (see the module doc)."""
    view = request.view
    if request.resources is not None:
        inline = request.resources
        return Access(False, purpose), iter([_apply(view, inline)])
    decision = services.policy.authorize(
        principal, AccessRequest(view.resource, Interaction.SEARCH, purpose)
    )
    flt = decision.require()
    pseudonymizer = services.fhir_router.pseudonymizer if decision.deidentify else None
    if decision.deidentify and pseudonymizer is None:
        raise Forbidden("De-identified access is not configured.")
    if decision.deidentify and (request.patients or request.group):
        raise Forbidden("De-identified access cannot select patients.")
    patients = list(request.patients) if request.patients else None
    if request.group is not None:
        group = services.policy.authorize(
            principal, AccessRequest("Group", Interaction.READ, purpose)
        )
        with services.db.read() as conn:
            stored = services.fhir_store.read(conn, group.require(), "Group", request.group)
        members = group_members(stored.resource or {})
        patients = [p for p in members if patients is None or p in patients]

    def batches() -> Iterator[list[tuple[Any, ...]]]:
        for page in pages(
            services.db,
            services.fhir_store,
            view.resource,
            flt,
            page_size=services.settings.warehouse_page_size,
            since=request.since,
            patients=patients,
        ):
            resources: Iterable[Mapping[str, Any]] = (
                s.resource for s in page if s.resource is not None
            )
            if pseudonymizer is not None:
                resources = (deidentify(r, pseudonymizer) for r in resources)
            yield _apply(view, resources)

    return Access(decision.deidentify, decision.purpose), batches()


def run_view(
    services: Services, principal: Principal, purpose: Purpose | None, request: RunRequest
) -> RunResult:
    """At most ``_limit`` rows (capped by ``SALUS_WAREHOUSE_RUN_MAX_ROWS``)."""
    cap = services.settings.warehouse_run_max_rows
    limit = min(request.limit, cap) if request.limit is not None else cap
    access, batches = view_batches(services, principal, purpose, request)
    rows: list[tuple[Any, ...]] = []
    for batch in batches:
        rows.extend(batch)
        if len(rows) > limit:
            break
    return RunResult(
        request.view.column_names, rows[:limit], access.deidentified, access.purpose,
        len(rows) > limit,
    )  # fmt: skip


def _apply(view: View, resources: Iterable[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    for resource in resources:
        rows.extend(view.rows(resource))
    return rows


def media_format(value: str | None) -> tuple[str, str]:
    """The output format of a ``_format`` value (default: json)."""
    if value is None:
        return FORMATS["json"]
    found = FORMATS.get(value.strip().lower().replace(" ", "+"))
    if found is None:
        raise NotAcceptable("_format must be json, ndjson, csv or parquet.")
    return found


def _cell(value: Any) -> Any:
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else value


def render(
    view: View, columns: Sequence[str], rows: Sequence[tuple[Any, ...]], fmt: str, *, header: bool
) -> bytes:
    """Rows in an output format (SQL-on-FHIR §"Output formats")."""
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        if header:
            writer.writerow(columns)
        writer.writerows([_cell(v) for v in row] for row in rows)
        return out.getvalue().encode()
    if fmt == "parquet":
        return to_parquet(rows_to_table(view.columns, rows, None))
    records = [dict(zip(columns, row, strict=True)) for row in rows]
    if fmt == "ndjson":
        return "".join(
            json.dumps(r, separators=(",", ":"), ensure_ascii=False) + "\n" for r in records
        ).encode()
    if fmt != "json":
        raise InvalidInput("Unknown output format.")
    return json.dumps(records, separators=(",", ":"), ensure_ascii=False).encode()
