"""Validation failures as OperationOutcomes with one issue per problem."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from salus.errors import InvalidInput

__all__ = ["ResourceInvalid", "validate_or_raise"]


class _Issue(Protocol):
    @property
    def severity(self) -> str: ...

    @property
    def code(self) -> str: ...

    @property
    def message(self) -> str: ...

    @property
    def expression(self) -> str: ...


class ResourceInvalid(InvalidInput):
    """A resource that breaks the R4 structure: 400 with every issue listed
    (FHIR http.html#create: 400 for a resource that could not be parsed or
    failed basic FHIR validation rules), each naming its element."""

    code = "resource-invalid"

    def __init__(self, issues: Sequence[_Issue]) -> None:
        self.issues = list(issues)
        first = self.issues[0]
        more = f" (and {len(self.issues) - 1} more)" if len(self.issues) > 1 else ""
        super().__init__(f"{first.message}{more}", expression=[first.expression])

    def to_operation_outcome(self, request_id: str | None = None) -> dict[str, Any]:
        outcome = super().to_operation_outcome(request_id)
        outcome["issue"] = [
            {
                "severity": "error" if issue.severity == "error" else "warning",
                "code": issue.code,
                "details": {
                    "coding": [{"system": "urn:salus:error", "code": self.code}],
                    "text": issue.message,
                },
                "diagnostics": issue.message,
                "expression": [issue.expression],
            }
            for issue in self.issues
        ]
        return outcome


def validate_or_raise(resource: Mapping[str, Any]) -> None:
    """Check a resource against the R4 structure; raise :class:`ResourceInvalid`."""
    from salus.fhir.validate import validate_resource

    errors = [issue for issue in validate_resource(resource) if issue.severity == "error"]
    if errors:
        raise ResourceInvalid(errors)
