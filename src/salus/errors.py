"""The one error tree of Salus.

Every failure that crosses a service boundary is a :class:`SalusError`. Each
class states, once, what it means on every protocol edge:

* ``http_status``: the HTTP status code (FHIR ``http.html``, DICOMweb PS3.18);
* ``issue_code``: the FHIR ``OperationOutcome.issue.code`` (value set
  ``issue-type``, FHIR R4 ``valueset-issue-type.html``);
* ``dimse_status``: the DIMSE status (PS3.4 Annex C/B, PS3.7 Annex C);
* ``hl7_ack``: the HL7 v2 original-mode acknowledgment code (MSH/MSA-1):
  ``AE`` (application error: the message was understood but is wrong) or
  ``AR`` (application reject: it cannot be processed here or now).

Only protocol edges translate these into responses; services raise them and
know nothing of HTTP, DIMSE or MLLP. Messages must never contain patient
data: they are shown to clients and may be logged.

The tree::

    SalusError                         500  exception       0xC000  AR
    ├── InvalidInput                   400  invalid         0xA900  AE
    │   ├── UnprocessableContent       422  processing      0xA900  AE
    │   └── PayloadTooLarge            413  too-costly      0xA700  AR
    ├── NotAuthenticated               401  login           0x0124  AR
    ├── Forbidden                      403  forbidden       0x0124  AR
    ├── NotFound                       404  not-found       0xC000  AE
    │   └── Gone                       410  deleted         0xC000  AE
    ├── MethodNotAllowed               405  not-supported   0x0122  AR
    ├── NotAcceptable                  406  not-supported   0x0122  AR
    ├── Conflict                       409  conflict        0xA900  AE
    │   └── PreconditionFailed         412  conflict        0xA900  AE
    ├── UnsupportedMediaType           415  not-supported   0x0122  AR
    ├── NotSupported                   501  not-supported   0x0122  AR
    ├── RateLimited                    429  throttled       0xA700  AR
    ├── Unavailable                    503  transient       0xA700  AR
    ├── ConfigurationError             500  exception       0xC000  AR
    └── IntegrityError                 500  exception       0xC000  AR
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "ConfigurationError",
    "Conflict",
    "Forbidden",
    "Gone",
    "IntegrityError",
    "InvalidInput",
    "MethodNotAllowed",
    "NotAcceptable",
    "NotAuthenticated",
    "NotFound",
    "NotSupported",
    "PayloadTooLarge",
    "PreconditionFailed",
    "RateLimited",
    "SalusError",
    "UnprocessableContent",
    "Unavailable",
    "UnsupportedMediaType",
    "error_classes",
]


class SalusError(Exception):
    """Base of every Salus error; see the module docstring for the tree.

    ``message`` is safe to show to the client. ``expression`` optionally names
    the offending element (a FHIRPath expression or a DICOM keyword), as
    ``OperationOutcome.issue.expression`` does.
    """

    http_status: ClassVar[int] = 500
    issue_code: ClassVar[str] = "exception"
    dimse_status: ClassVar[int] = 0xC000
    hl7_ack: ClassVar[str] = "AR"
    #: A stable, machine-readable name clients can switch on.
    code: ClassVar[str] = "internal-error"
    #: Whether retrying the same request later may succeed.
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str | None = None,
        *,
        expression: list[str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message()
        self.expression = list(expression or [])
        self.headers = dict(headers or {})
        super().__init__(self.message)

    @classmethod
    def default_message(cls) -> str:
        return "An internal error occurred."

    def to_operation_outcome(self, request_id: str | None = None) -> dict[str, Any]:
        """Render as a FHIR R4 OperationOutcome (FHIR ``operationoutcome.html``)."""
        issue: dict[str, Any] = {
            "severity": "error" if self.http_status < 500 else "fatal",
            "code": self.issue_code,
            "details": {
                "coding": [{"system": "urn:salus:error", "code": self.code}],
                "text": self.message,
            },
            "diagnostics": self.message,
        }
        if self.expression:
            issue["expression"] = self.expression
        outcome: dict[str, Any] = {"resourceType": "OperationOutcome", "issue": [issue]}
        if request_id:
            outcome["id"] = request_id
        return outcome


class InvalidInput(SalusError):
    """The request or message is malformed or breaks a rule of its format."""

    http_status = 400
    issue_code = "invalid"
    dimse_status = 0xA900  # Error: data set does not match SOP class
    hl7_ack = "AE"
    code = "invalid-input"

    @classmethod
    def default_message(cls) -> str:
        return "The input is not valid."


class UnprocessableContent(InvalidInput):
    """Well-formed, but violates a business or profile rule (FHIR 422)."""

    http_status = 422
    issue_code = "processing"
    code = "unprocessable"


class PayloadTooLarge(InvalidInput):
    """The body, file or message is larger than the configured maximum."""

    http_status = 413
    issue_code = "too-costly"
    dimse_status = 0xA700  # Refused: out of resources
    hl7_ack = "AR"
    code = "too-large"

    @classmethod
    def default_message(cls) -> str:
        return "The payload is larger than this server accepts."


class NotAuthenticated(SalusError):
    """No credentials, or credentials that are not valid."""

    http_status = 401
    issue_code = "login"
    dimse_status = 0x0124  # Refused: not authorized
    hl7_ack = "AR"
    code = "not-authenticated"

    @classmethod
    def default_message(cls) -> str:
        return "Authentication is required."


class Forbidden(SalusError):
    """Authenticated, but the policy does not allow this."""

    http_status = 403
    issue_code = "forbidden"
    dimse_status = 0x0124
    hl7_ack = "AR"
    code = "forbidden"

    @classmethod
    def default_message(cls) -> str:
        return "Access to this resource is not allowed."


class NotFound(SalusError):
    """The addressed item does not exist (or is not visible to the caller)."""

    http_status = 404
    issue_code = "not-found"
    dimse_status = 0xC000
    hl7_ack = "AE"
    code = "not-found"

    @classmethod
    def default_message(cls) -> str:
        return "Not found."


class Gone(NotFound):
    """The item existed and was deleted (FHIR http.html#read: 410)."""

    http_status = 410
    issue_code = "deleted"
    code = "gone"

    @classmethod
    def default_message(cls) -> str:
        return "The resource has been deleted."


class MethodNotAllowed(SalusError):
    http_status = 405
    issue_code = "not-supported"
    dimse_status = 0x0122  # Refused: SOP class not supported
    hl7_ack = "AR"
    code = "method-not-allowed"

    @classmethod
    def default_message(cls) -> str:
        return "This method is not allowed on this endpoint."


class NotAcceptable(SalusError):
    """None of the representations the client accepts can be produced."""

    http_status = 406
    issue_code = "not-supported"
    dimse_status = 0x0122
    hl7_ack = "AR"
    code = "not-acceptable"

    @classmethod
    def default_message(cls) -> str:
        return "None of the accepted representations can be produced."


class Conflict(SalusError):
    """The change conflicts with the current state (FHIR 409)."""

    http_status = 409
    issue_code = "conflict"
    dimse_status = 0xA900
    hl7_ack = "AE"
    code = "conflict"

    @classmethod
    def default_message(cls) -> str:
        return "The change conflicts with the current state."


class PreconditionFailed(Conflict):
    """A version precondition (If-Match) or conditional match failed (FHIR 412)."""

    http_status = 412
    code = "precondition-failed"

    @classmethod
    def default_message(cls) -> str:
        return "A precondition of the request was not met."


class UnsupportedMediaType(SalusError):
    http_status = 415
    issue_code = "not-supported"
    dimse_status = 0x0122
    hl7_ack = "AR"
    code = "unsupported-media-type"

    @classmethod
    def default_message(cls) -> str:
        return "The content type is not supported."


class NotSupported(SalusError):
    """A valid request for something this server does not implement."""

    http_status = 501
    issue_code = "not-supported"
    dimse_status = 0x0122
    hl7_ack = "AR"
    code = "not-supported"

    @classmethod
    def default_message(cls) -> str:
        return "This operation is not supported."


class RateLimited(SalusError):
    http_status = 429
    issue_code = "throttled"
    dimse_status = 0xA700
    hl7_ack = "AR"
    code = "rate-limited"
    retryable = True

    @classmethod
    def default_message(cls) -> str:
        return "Too many requests; retry later."


class Unavailable(SalusError):
    """A dependency (database, blob store, key provider) is unreachable."""

    http_status = 503
    issue_code = "transient"
    dimse_status = 0xA700
    hl7_ack = "AR"
    code = "unavailable"
    retryable = True

    @classmethod
    def default_message(cls) -> str:
        return "The service is temporarily unavailable."


class ConfigurationError(SalusError):
    """The settings are invalid or unsafe; raised at start-up."""

    code = "configuration"

    @classmethod
    def default_message(cls) -> str:
        return "The server is not configured correctly."


class IntegrityError(SalusError):
    """Stored data failed an integrity check (tampering or corruption).

    Raised instead of ever returning bytes that were not the ones written.
    """

    code = "integrity"

    @classmethod
    def default_message(cls) -> str:
        return "Stored data failed its integrity check."


def error_classes() -> list[type[SalusError]]:
    """Every class of the tree, base first (used by contract tests and docs)."""
    seen: list[type[SalusError]] = []
    stack: list[type[SalusError]] = [SalusError]
    while stack:
        cls = stack.pop(0)
        seen.append(cls)
        stack.extend(cls.__subclasses__())
    return seen
