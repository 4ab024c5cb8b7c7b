"""The whole schema: every table module's definitions on one MetaData.

Each part of Salus keeps its tables in its own module (``tables`` for the
core and FHIR, ``tables_dicom`` for the image archive, ``tables_hl7`` for
the message store); importing this module registers all of them, which is
what migrations and the schema-agreement test need.
"""

from __future__ import annotations

from salus.db import tables_dicom, tables_hl7, tables_opendata, tables_warehouse
from salus.db.tables import metadata

__all__ = ["metadata", "tables_dicom", "tables_hl7", "tables_opendata", "tables_warehouse"]
