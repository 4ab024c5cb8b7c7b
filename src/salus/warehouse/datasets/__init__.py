"""Operational datasets: hospitals' CSV/JSON extracts (staff, equipment, medicines,
beds, quality) validated against published schemas, stored in the warehouse
and mapped to FHIR resources. ``docs/warehouse.md`` ("Operational datasets")
describes them.

* :mod:`.schema`, :mod:`.definitions`: the schemas (data, versioned);
* :mod:`.validate`: reading CSV/JSON and the row-by-row report;
* :mod:`.mapping`: the FHIR resources each row produces;
* :mod:`.service`: loading a valid submission in one transaction;
* :mod:`.routes`, :mod:`.cli`: ``/api/v1/datasets`` and ``salus submit`` / ``salus datasets``.
"""

from __future__ import annotations

from salus.warehouse.datasets.definitions import SCHEMAS, schema_named
from salus.warehouse.datasets.service import Datasets, SubmissionRejected, SubmissionSummary

__all__ = ["SCHEMAS", "Datasets", "SubmissionRejected", "SubmissionSummary", "schema_named"]
