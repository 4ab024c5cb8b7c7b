"""Errors of the view runner, in Salus's error tree (:mod:`salus.errors`).

A ViewDefinition that breaks the SQL-on-FHIR v2 rules is refused before any
resource is read (400, ``invalid``, the offending element named as
``OperationOutcome.issue.expression``, e.g. ``ViewDefinition.select[0].forEach``).
A valid view can still fail on data (a ``collection: false`` column meeting
several values, a ``where`` that is not boolean): that is a 422. Messages
never quote resource content.
"""

from __future__ import annotations

from salus.errors import InvalidInput, UnprocessableContent

__all__ = ["ViewDefinitionError", "ViewRuntimeError"]


class ViewDefinitionError(InvalidInput):
    """The ViewDefinition is not valid (SQL-on-FHIR v2 ViewDefinition constraints)."""

    code = "invalid-view-definition"


class ViewRuntimeError(UnprocessableContent):
    """A valid ViewDefinition could not be applied to a resource."""

    code = "view-evaluation-failed"
