"""One place where third-party libraries are told what they may log.

Libraries log what they see, and what they see can be a patient's record:
uvicorn's access log writes full request URLs (``/fhir/Patient?name=...``),
and pynetdicom logs query identifiers (the DICOM issue adds its switch here).
Salus writes its own access log with route templates instead.
"""

from __future__ import annotations

import logging

__all__ = ["quiet_pynetdicom", "quiet_third_party_loggers"]


def quiet_third_party_loggers() -> None:
    # uvicorn.access: full URLs with query strings; Salus logs route templates.
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    access.disabled = True
    # Libraries that are chatty at INFO with connection details.
    for name in ("botocore", "boto3", "s3transfer", "urllib3", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)
    quiet_pynetdicom()


def quiet_pynetdicom() -> None:
    """pynetdicom logs every C-FIND/C-MOVE/C-GET identifier (patient names, ids) and
    each association's details at INFO/DEBUG: switch the identifiers off and keep
    only its warnings. Called again by the DIMSE listener before it starts."""
    try:
        from pynetdicom import _config as pynetdicom_config
    except ImportError:  # pragma: no cover - pynetdicom is a dependency
        return
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
    pynetdicom_config.LOG_HANDLER_LEVEL = "none"
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
