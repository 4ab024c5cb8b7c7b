"""DICOMweb (PS3.18) under ``/dicomweb``: STOW-RS, QIDO-RS, WADO-RS and WADO-URI.

Thin HTTP edges over the archive core (:class:`~salus.dicom.archive.DicomArchive`):
the caller is the bearer token's principal (``current_principal``), every
operation is authorized as ``ImagingStudy`` and audited by the archive, and
errors have the project's one shape (an OperationOutcome, ADR 6) except where
PS3.18 defines the body (the STOW-RS Store Instances Response).

Modules by concept: :mod:`.stow`, :mod:`.qido`, :mod:`.retrieve` (instances,
metadata, frames, bulk data), :mod:`.rendered` (rendered, thumbnail,
WADO-URI); :mod:`.media` (Accept negotiation, multipart/related) and
:mod:`.dicomjson` (DICOM JSON and XML) serve them.
"""

from __future__ import annotations

from fastapi import FastAPI

__all__ = ["install_dicomweb"]


def install_dicomweb(api: FastAPI) -> None:
    from salus.dicom.web import qido, rendered, retrieve, stow

    # Each router carries the /dicomweb prefix on its routes (not a parent router's),
    # so the route templates in access logs, metrics and audit events are complete.
    for module in (rendered, qido, stow, retrieve):
        api.include_router(module.router)
