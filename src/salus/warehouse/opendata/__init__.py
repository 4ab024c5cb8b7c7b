"""Open data (issue 7, item 5): chosen indicators published as open datasets.

:mod:`.suppression` applies small-cell suppression with complementary cells;
:mod:`.publish` builds the files (CSV, JSON, a Frictionless Data
``datapackage.json``), keeps them in the blob store and records the
publication; :mod:`.routes` serves ``POST /api/v1/open-data/publications``
(authority) and ``GET /open-data/...`` (anyone); :mod:`.cli` is
``salus warehouse opendata publish|list``. ``docs/warehouse.md``, "Open data".
"""

from __future__ import annotations

__all__: list[str] = []
