"""prepare_creates extracts each resource's index values once and reads its
patient compartment (an Observation's subject, an Encounter's patient…) from
them: over every resource of the Synthea test bundles (synthetic, Apache-2.0;
tests/data/fhir/synthea), the resource rows' ``patient_key`` and the index
rows equal those computed independently (compartment and index rows each
from the body, as before)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from salus.audit.chain import AuditLog
from salus.fhir.search.extract import patient_compartment
from salus.security.principal import Principal, PrincipalKind
from salus.services import build_fhir_store
from tests.fhirdata import rewrite_references

DATA = Path(__file__).resolve().parents[1] / "data" / "fhir" / "synthea"
ALICE = Principal(PrincipalKind.USER, "alice", "hospital-a")


def _resources() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(DATA.glob("*.json.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            bundle = json.load(handle)
        ids = {
            e["fullUrl"]: f"{e['resource']['resourceType']}/{e['fullUrl'].rsplit(':', 1)[-1]}"
            for e in bundle["entry"]
        }
        for entry in bundle["entry"]:
            resource = rewrite_references(entry["resource"], ids)
            resource.pop("id", None)
            out.append(resource)
    return out


def test_prepared_rows_equal_separate_extraction() -> None:
    resources = _resources()
    assert len(resources) > 50
    store = build_fhir_store(None, AuditLog.__new__(AuditLog))  # no database needed
    batch = store.prepare_creates(ALICE, [(r, None) for r in resources])
    with_patient = 0
    for (res_type, _, body), row, index in zip(
        batch.prepared, batch.rows, batch.index_rows, strict=True
    ):
        expected_key = patient_compartment(body)
        assert row["patient_key"] == expected_key, res_type
        with_patient += res_type != "Patient" and expected_key is not None
        assert index == store.indexer.rows(0, res_type, body), res_type
    assert with_patient > 50  # the compartment came from the values for most
