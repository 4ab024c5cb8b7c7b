"""The error tree: every class says what it means on every protocol edge."""

from __future__ import annotations

import pytest

from salus import errors

# FHIR R4 valueset-issue-type (the codes OperationOutcome.issue.code may take).
FHIR_ISSUE_TYPES = {
    "invalid",
    "structure",
    "required",
    "value",
    "invariant",
    "security",
    "login",
    "unknown",
    "expired",
    "forbidden",
    "suppressed",
    "processing",
    "not-supported",
    "duplicate",
    "multiple-matches",
    "not-found",
    "deleted",
    "too-long",
    "code-invalid",
    "extension",
    "too-costly",
    "business-rule",
    "conflict",
    "transient",
    "lock-error",
    "no-store",
    "exception",
    "timeout",
    "incomplete",
    "throttled",
    "informational",
}
# DIMSE failure and refusal statuses a service may return (PS3.7 C.4, PS3.4 B.2.3).
# PS3.7 Annex C failure statuses: processing failure, duplicate SOP instance,
# SOP class not supported, not authorized, out of resources, dataset/identifier
# mismatch, cannot understand.
DIMSE_FAILURES = {0x0110, 0x0111, 0x0122, 0x0124, 0xA700, 0xA900, 0xC000}

# The tree of salus.errors itself: subclasses elsewhere in the package (with
# their own constructors) appear in error_classes() only once their module is
# imported, which would make this list depend on the order tests run in.
ALL = [cls for cls in errors.error_classes() if cls.__module__ == "salus.errors"]


def test_tree_is_complete_and_exported() -> None:
    exported = {getattr(errors, name) for name in errors.__all__ if name[0].isupper()}
    defined_here = {cls for cls in ALL if cls.__module__ == "salus.errors"}
    assert defined_here == exported


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_each_class_maps_to_every_protocol(cls: type[errors.SalusError]) -> None:
    assert 400 <= cls.http_status <= 599
    assert cls.issue_code in FHIR_ISSUE_TYPES
    assert cls.dimse_status in DIMSE_FAILURES
    assert cls.hl7_ack in {"AE", "AR"}
    assert cls.code and cls.code == cls.code.lower()


def test_codes_are_unique() -> None:
    codes = [cls.code for cls in ALL]
    assert len(codes) == len(set(codes))


def test_client_errors_are_application_errors_or_rejects() -> None:
    # Bad content is AE (fix and resend); refusals are AR.
    assert errors.InvalidInput.hl7_ack == "AE"
    assert errors.Forbidden.hl7_ack == "AR"
    assert errors.Unavailable.retryable and not errors.InvalidInput.retryable


def test_operation_outcome_shape() -> None:
    exc = errors.UnprocessableContent(
        "Patient.birthDate is not a date.", expression=["Patient.birthDate"]
    )
    outcome = exc.to_operation_outcome("req-1")
    assert outcome == {
        "resourceType": "OperationOutcome",
        "id": "req-1",
        "issue": [
            {
                "severity": "error",
                "code": "processing",
                "details": {
                    "coding": [{"system": "urn:salus:error", "code": "unprocessable"}],
                    "text": "Patient.birthDate is not a date.",
                },
                "diagnostics": "Patient.birthDate is not a date.",
                "expression": ["Patient.birthDate"],
            }
        ],
    }


def test_server_errors_are_fatal_and_default_messages_exist() -> None:
    for cls in ALL:
        exc = cls()
        assert exc.message
        severity = exc.to_operation_outcome()["issue"][0]["severity"]
        assert severity == ("fatal" if cls.http_status >= 500 else "error")
