"""Publishing indicators as open data, and the record of what was published.

A publication (:meth:`OpenData.publish`) takes chosen indicators (definition
id, disaggregations) and months, computes them as the host's SYSTEM
principal (:class:`~salus.warehouse.indicators.engine.Indicators`, the
scheduled snapshot unless ``refresh``), keeps the hospitals' cells only and
rebuilds every total from them (network, ``total`` over each
disaggregation), applies :func:`~.suppression.suppress` and writes, per
indicator, ``{id}.csv`` and ``{id}.json``, and one ``datapackage.json``
(Frictionless Data Package v1, "tabular-data-package": title, description,
licence, publisher, creation time, one resource per file with its SHA-256,
byte size and Table Schema, the indicator's definition and version, the
months and the suppression rule). Files go to the blob store (content
addressed: the digest is the file's SHA-256) and the publication to
``opendata_publications``/``opendata_files`` in one transaction, so a
publication can be downloaded again byte for byte. Publications are never
changed; publishing again makes a new one.

Only aggregate cells leave: hospital (organization id) or ``network``,
month, the disaggregation values, numerator, denominator, value and
``suppressed``; a last check refuses to publish a counted figure between 1
and k-1.

Who: principals of the health authority (an organization of kind
``authority``) holding ``authority_analyst`` or ``administrator``, and the
host's SYSTEM principal naming an authority organization (CLI). Reading is
open to anyone (:mod:`.routes`).
"""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from salus.audit.events import AuditEvent
from salus.db.tables import organizations
from salus.db.tables_opendata import opendata_files, opendata_publications
from salus.db.types import utcnow
from salus.errors import Forbidden, InvalidInput, NotFound
from salus.security.principal import Principal, PrincipalKind
from salus.warehouse.indicators.definitions_index import Indicator, indicator
from salus.warehouse.indicators.engine import NETWORK, Indicators, system_principal
from salus.warehouse.opendata.suppression import SuppressionRule, Table, build_table, suppress

if TYPE_CHECKING:
    from salus.services import Services

__all__ = ["LICENCES", "TOTAL", "Choice", "OpenData", "PublicationRequest"]

#: The label of a total over a disaggregation.
TOTAL = "total"
#: Licences a publication may carry: id -> (title, path).
LICENCES = {
    "CC-BY-4.0": (
        "Creative Commons Attribution 4.0",
        "https://creativecommons.org/licenses/by/4.0/",
    ),
    "CC0-1.0": ("CC0 1.0 Universal", "https://creativecommons.org/publicdomain/zero/1.0/"),
    "ODC-BY-1.0": (
        "Open Data Commons Attribution License",
        "https://opendatacommons.org/licenses/by/1-0/",
    ),
}
PUBLISHER_ROLES = frozenset({"authority_analyst", "administrator"})
_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


@dataclass(frozen=True, slots=True)
class Choice:
    indicator: str
    by: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PublicationRequest:
    indicators: tuple[Choice, ...]
    periods: tuple[str, ...] = ()  # empty: every month computed
    title: str | None = None
    description: str | None = None
    licence: str = "CC-BY-4.0"
    org: str | None = None  # the publishing authority, for SYSTEM
    refresh: bool = False

    @classmethod
    def from_json(cls, body: Any) -> PublicationRequest:
        """Read and check a request body (400 names the bad member)."""
        if not isinstance(body, Mapping):
            raise InvalidInput("The body must be a JSON object.")
        raw = body.get("indicators")
        if not isinstance(raw, list) or not raw:
            raise InvalidInput("Name at least one indicator.", expression=["indicators"])
        choices: list[Choice] = []
        for i, item in enumerate(raw):
            if isinstance(item, str):
                item = {"id": item}
            by = item.get("by", []) if isinstance(item, Mapping) else None
            if isinstance(by, str):
                by = [b.strip() for b in by.split(",") if b.strip()]
            if (
                not isinstance(item, Mapping)
                or not isinstance(item.get("id"), str)
                or not isinstance(by, list)
                or not all(isinstance(b, str) for b in by)
            ):
                raise InvalidInput(
                    "Each indicator is an id or {id, by}.", expression=[f"indicators[{i}]"]
                )
            choices.append(Choice(item["id"], tuple(by)))
        periods = body.get("periods", [])
        if not isinstance(periods, list) or not all(
            isinstance(p, str) and _MONTH.match(p) for p in periods
        ):
            raise InvalidInput("Periods are months (YYYY-MM).", expression=["periods"])
        texts = {k: body.get(k) for k in ("title", "description", "org")}
        for name, text in texts.items():
            if text is not None and (not isinstance(text, str) or len(text) > 2000):
                raise InvalidInput(f"'{name}' must be a short text.", expression=[name])
        licence = body.get("licence", "CC-BY-4.0")
        if licence not in LICENCES:
            raise InvalidInput(f"Licence: one of {', '.join(LICENCES)}.", expression=["licence"])
        return cls(
            tuple(choices),
            tuple(sorted(set(periods))),
            texts["title"],
            texts["description"],
            licence,
            texts["org"],
            bool(body.get("refresh", False)),
        )


@dataclass(frozen=True, slots=True)
class _File:
    name: str
    media_type: str
    data: bytes


def _value(ind: Indicator, numerator: Any, denominator: Any) -> Any:
    if ind.scale is None:
        return numerator
    if denominator:
        return round(float(numerator or 0) / float(denominator) * ind.scale, 4)
    return None


def _number(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class OpenData:
    """Publications of one Salus process (stateless; see the module doc)."""

    def __init__(self, services: Services) -> None:
        self.services = services

    @property
    def min_cell(self) -> int:
        return self.services.settings.warehouse_indicator_min_cell

    # -- who ------------------------------------------------------------------------------
    def _org(self, org_id: str) -> tuple[str, str] | None:
        with self.services.db.read() as conn:
            row = conn.execute(
                select(organizations.c.name, organizations.c.kind).where(
                    organizations.c.id == org_id
                )
            ).first()
        return None if row is None else (str(row.name), str(row.kind))

    def publisher(self, principal: Principal, org: str | None = None) -> tuple[str, str]:
        """The publishing authority (id, name), or Forbidden (module doc)."""
        if principal.kind is PrincipalKind.SYSTEM:
            if not org:
                raise InvalidInput(
                    "Name the publishing authority organization.", expression=["org"]
                )
            found = self._org(org)
            if found is None or found[1] != "authority":
                raise InvalidInput(
                    "The publisher must be an authority organization.", expression=["org"]
                )
            return org, found[0]
        found = self._org(principal.org_id)
        if found is None or found[1] != "authority" or not principal.roles & PUBLISHER_ROLES:
            raise Forbidden("Open data is published by the health authority's analysts.")
        return principal.org_id, found[0]

    def _hospital_names(self) -> dict[str, str]:
        with self.services.db.read() as conn:
            rows = conn.execute(
                select(organizations.c.id, organizations.c.name).where(
                    organizations.c.kind == "hospital"
                )
            ).all()
        return {str(r.id): str(r.name) for r in sorted(rows)}

    # -- building ---------------------------------------------------------------------------
    def table(
        self, engine: Indicators, choice: Choice, periods: Sequence[str]
    ) -> tuple[Indicator, Table, str | None]:
        """One indicator's published table, suppressed, and when it was computed."""
        ind = indicator(choice.indicator)
        result = engine.compute(system_principal(), ind.id, by=choice.by)
        dims = tuple(result.dimensions)
        totals = {"hospital": NETWORK, **{d: TOTAL for d in dims[2:] if d not in ind.always}}
        base = []
        for cell in result.cells:
            if cell["hospital"] == NETWORK or (periods and cell["period"] not in periods):
                continue
            row = {d: ("unknown" if cell[d] is None else str(cell[d])) for d in dims}
            if any(row[d] == label for d, label in totals.items()):
                raise InvalidInput(
                    f"A '{choice.indicator}' category is named like a total: not published."
                )
            row.update(numerator=cell["numerator"], denominator=cell["denominator"])
            base.append(row)
        rule = SuppressionRule(self.min_cell, ind.suppressed_counts)
        table = suppress(build_table(dims, totals, base), rule)
        for done in table.cells.values():  # the last line of defence
            if not done.suppressed and rule.primary(done):  # pragma: no cover - suppress() did
                raise AssertionError("a small cell was about to be published")
        when = result.computed_at
        return ind, table, None if when is None else when.isoformat(timespec="seconds")

    def _rows(self, ind: Indicator, table: Table) -> list[dict[str, Any]]:
        dims = table.dims

        def order(key: tuple[Any, ...]) -> tuple[Any, ...]:
            return tuple((v in (NETWORK, TOTAL), str(v)) for v in key)

        rows = []
        for key in sorted(table.cells, key=order):
            cell = table.cells[key]
            row: dict[str, Any] = dict(zip(dims, key, strict=True))
            if cell.suppressed:
                row.update(numerator=None, denominator=None, value=None, suppressed=True)
            else:
                n, d = _number(cell.numerator), _number(cell.denominator)
                row.update(numerator=n, denominator=d, value=_value(ind, n, d), suppressed=False)
            rows.append(row)
        return rows

    @staticmethod
    def _csv(columns: Sequence[str], rows: list[dict[str, Any]]) -> bytes:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180
        writer.writerow(columns)
        for row in rows:
            writer.writerow(
                [
                    ("true" if row[c] else "false")
                    if c == "suppressed"
                    else ("" if row[c] is None else row[c])
                    for c in columns
                ]
            )
        return out.getvalue().encode("utf-8")

    @staticmethod
    def _schema(ind: Indicator, dims: Sequence[str]) -> dict[str, Any]:
        fields: list[dict[str, Any]] = [{"name": d, "type": "string"} for d in dims]
        fields[1]["format"] = "default"
        fields += [
            {"name": "numerator", "type": "number", "description": ind.numerator},
            {"name": "denominator", "type": "number", "description": ind.denominator or ""},
            {"name": "value", "type": "number", "description": f"{ind.unit}"},
            {
                "name": "suppressed",
                "type": "boolean",
                "trueValues": ["true"],
                "falseValues": ["false"],
            },
        ]
        return {"fields": fields, "missingValues": [""], "primaryKey": list(dims)}

    # -- publishing -------------------------------------------------------------------------
    def publish(self, principal: Principal, request: PublicationRequest) -> dict[str, Any]:
        org_id, org_name = self.publisher(principal, request.org)
        names = [c.indicator for c in request.indicators]
        if len(set(names)) != len(names):
            raise InvalidInput("Each indicator once per publication.", expression=["indicators"])
        engine = Indicators(self.services)
        if request.refresh:  # materialize the views and recompute the snapshots first
            engine.refresh()
            for choice in request.indicators:
                engine.snapshot(indicator(choice.indicator))
        pub_id = str(uuid.uuid4())
        now = utcnow()
        files: list[_File] = []
        resources: list[dict[str, Any]] = []
        chosen: list[dict[str, Any]] = []
        periods: set[str] = set()
        cells = hidden = 0
        for choice in request.indicators:
            ind, table, computed_at = self.table(engine, choice, request.periods)
            rows = self._rows(ind, table)
            dims = list(table.dims)
            columns = [*dims, "numerator", "denominator", "value", "suppressed"]
            periods.update(r["period"] for r in rows)
            cells += len(rows)
            hidden += sum(1 for r in rows if r["suppressed"])
            definition = {
                k: v for k, v in ind.to_json(self.min_cell).items() if k not in ("sources",)
            }
            totals = {"hospital": NETWORK, **{d: TOTAL for d in dims[2:] if d not in ind.always}}
            payload = {"indicator": definition, "dimensions": dims, "totals": totals, "cells": rows}
            pair = [
                _File(f"{ind.id}.csv", "text/csv", self._csv(columns, rows)),
                _File(f"{ind.id}.json", "application/json", _json(payload)),
            ]
            for f in pair:
                resource: dict[str, Any] = {
                    "name": f.name.replace(".", "-"),
                    "path": f.name,
                    "title": ind.title,
                    "format": f.name.rsplit(".", 1)[1],
                    "mediatype": f.media_type,
                    "encoding": "utf-8",
                    "bytes": len(f.data),
                    "hash": f"sha256:{_sha256(f.data)}",
                    "indicator": {"id": ind.id, "version": ind.version, "by": list(choice.by)},
                }
                if f.media_type == "text/csv":
                    resource["profile"] = "tabular-data-resource"
                    resource["dialect"] = {"delimiter": ",", "lineTerminator": "\r\n"}
                    resource["schema"] = self._schema(ind, dims)
                resources.append(resource)
            files.extend(pair)
            chosen.append(
                {
                    "id": ind.id,
                    "version": ind.version,
                    "computedAt": computed_at,
                    "by": list(choice.by),
                    "definition": definition,
                }
            )
        if not cells:
            raise InvalidInput(
                "No figures for these indicators and months.", expression=["periods"]
            )
        title = request.title or "Health network indicators"
        description = request.description or (
            "Indicators of the city's hospital network, per hospital and for the network, "
            "per month, with small-cell suppression."
        )
        rule = SuppressionRule(self.min_cell, ("numerator", "denominator")).describe()
        licence_title, licence_path = LICENCES[request.licence]
        package = {
            "profile": "tabular-data-package",
            "name": f"salus-open-data-{now:%Y%m%d}-{pub_id[:8]}",
            "id": f"urn:uuid:{pub_id}",
            "title": title,
            "description": description,
            "licenses": [{"name": request.licence, "title": licence_title, "path": licence_path}],
            "contributors": [{"title": org_name, "role": "publisher"}],
            "created": now.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "temporal": {"periods": sorted(periods)},
            "hospitals": self._hospital_names(),
            "indicators": chosen,
            "suppression": {
                "minCell": self.min_cell,
                "rule": rule,
                "counts": {c["id"]: list(indicator(c["id"]).suppressed_counts) for c in chosen},
            },
            "resources": resources,
        }
        files.append(_File("datapackage.json", "application/json", _json(package)))
        stored = [(f, self.services.blobs.put(f.data)) for f in files]
        record = {
            "id": pub_id,
            "title": title,
            "description": description,
            "licence": request.licence,
            "publisher": org_name,
            "publisher_org": org_id,
            "published_by": f"{principal.kind.value}:{principal.id}"[:120],
            "published_at": now,
            "indicators": [{k: c[k] for k in ("id", "version", "by")} for c in chosen],
            "periods": sorted(periods),
            "min_cell": self.min_cell,
            "cells": cells,
            "suppressed": hidden,
        }
        with self.services.db.write() as conn:
            conn.execute(opendata_publications.insert().values(**record))
            conn.execute(
                opendata_files.insert(),
                [
                    {
                        "publication_id": pub_id,
                        "name": f.name,
                        "media_type": f.media_type,
                        "digest": ref.digest,
                        "bytes": ref.size,
                    }
                    for f, ref in stored
                ],
            )
        self.services.audit.record(
            [
                AuditEvent.for_principal(
                    principal,
                    category="export",
                    action="C",
                    entity=f"open-data/{pub_id}",
                    description="open data published",
                    flags="deidentified",
                    detail={"indicators": names, "cells": cells, "suppressed": hidden},
                )
            ]
        )
        return self.get(pub_id, private=True)

    # -- reading ----------------------------------------------------------------------------
    def _describe(self, row: Any, files: list[Any], *, private: bool) -> dict[str, Any]:
        base = f"/open-data/publications/{row.id}"
        out: dict[str, Any] = {
            "id": row.id,
            "title": row.title,
            "description": row.description,
            "licence": row.licence,
            "publisher": row.publisher,
            "publishedAt": row.published_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "indicators": row.indicators,
            "periods": row.periods,
            "suppression": {
                "minCell": row.min_cell,
                "cells": row.cells,
                "suppressed": row.suppressed,
            },
            "files": [
                {
                    "name": f.name,
                    "mediaType": f.media_type,
                    "bytes": int(f.bytes),
                    "sha256": f.digest,
                    "url": f"{base}/files/{f.name}",
                }
                for f in sorted(files, key=lambda f: (f.name != "datapackage.json", f.name))
            ],
            "url": base,
        }
        if private:
            out["publisherOrg"] = row.publisher_org
            out["publishedBy"] = row.published_by
        return out

    def list(self, *, private: bool = False) -> list[dict[str, Any]]:
        """Every publication, newest first."""
        p = opendata_publications
        with self.services.db.read() as conn:
            rows = conn.execute(select(p).order_by(p.c.published_at.desc(), p.c.id)).all()
            files = conn.execute(select(opendata_files)).all()
        by_pub: dict[str, list[Any]] = {}
        for f in files:
            by_pub.setdefault(f.publication_id, []).append(f)
        return [self._describe(r, by_pub.get(r.id, []), private=private) for r in rows]

    def get(self, pub_id: str, *, private: bool = False) -> dict[str, Any]:
        with self.services.db.read() as conn:
            row = conn.execute(
                select(opendata_publications).where(opendata_publications.c.id == pub_id)
            ).first()
            files = conn.execute(
                select(opendata_files).where(opendata_files.c.publication_id == pub_id)
            ).all()
        if row is None:
            raise NotFound("No such publication.")
        return self._describe(row, list(files), private=private)

    def file(self, pub_id: str, name: str) -> tuple[bytes, str, str]:
        """A published file: its bytes, media type and SHA-256 (checked on the way out)."""
        with self.services.db.read() as conn:
            row = conn.execute(
                select(opendata_files).where(
                    opendata_files.c.publication_id == pub_id, opendata_files.c.name == name
                )
            ).first()
        if row is None:
            raise NotFound("No such file in this publication.")
        data = bytes(self.services.blobs.get(row.digest))
        if _sha256(data) != row.digest:  # pragma: no cover - the blob store checks too
            raise NotFound("The file is damaged.")
        return data, str(row.media_type), str(row.digest)


def _json(payload: Any) -> bytes:
    return (json.dumps(payload, ensure_ascii=False, indent=1, sort_keys=False) + "\n").encode()


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
