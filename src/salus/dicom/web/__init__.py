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

from fastapi import APIRouter, FastAPI

__all__ = ["install_dicomweb"]


def install_dicomweb(api: FastAPI) -> None:
    from salus.dicom.web import qido, rendered, retrieve, stow
    from salus.dicom.web.common import PREFIX

    router = APIRouter(prefix=PREFIX)
    # Literal paths before the {study} patterns they could be mistaken for.
    router.include_router(rendered.router)
    router.include_router(qido.router)
    router.include_router(stow.router)
    router.include_router(retrieve.router)
    api.include_router(router)
