"""SQL-on-FHIR v2 (https://sql-on-fhir.org/ig/latest/): the ViewDefinition runner.

:func:`compile_view` checks and compiles a ViewDefinition into a
:class:`View` that turns resources into rows; :mod:`.fhirpath` is the
FHIRPath subset it compiles; errors are :class:`ViewDefinitionError` (400)
and :class:`ViewRuntimeError` (422).
"""

from __future__ import annotations

from salus.warehouse.sqlonfhir.errors import ViewDefinitionError, ViewRuntimeError
from salus.warehouse.sqlonfhir.view import Column, View, compile_view

__all__ = ["Column", "View", "ViewDefinitionError", "ViewRuntimeError", "compile_view"]
