"""The DICOM archive: DIMSE listener, DICOMweb, the image index and its FHIR link.

Two entry points tie this part into a Salus process: :func:`install` adds its
services, listeners and job handlers when :class:`~salus.services.Services`
is built, and :func:`install_routes` mounts DICOMweb under /dicomweb on the ASGI app.
The archive core (:class:`~salus.dicom.archive.DicomArchive`, ``services.dicom``)
is what every edge calls; ``docs/dicom.md`` describes it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from salus.services import Services

__all__ = ["install", "install_routes"]


def install(services: Services) -> None:
    """Create the archive (``services.dicom``), its job handlers and, when
    enabled, the DIMSE listener."""
    from salus.dicom.archive import DicomArchive
    from salus.dicom.events import register_jobs

    settings = services.settings
    services.dicom = DicomArchive.from_settings(
        settings,
        services.db,
        services.blobs,
        services.policy,
        services.audit,
        services.jobs,
        services.value_sealer(),
    )
    register_jobs(services)
    if settings.jobs_enabled and settings.dicom_blob_sweep_seconds > 0:
        from salus.dicom.sweep import BlobSweepScheduler

        services.listeners.append(BlobSweepScheduler(services))
    if settings.dicom_enabled:
        from salus.dicom.dimse import DimseListener

        services.listeners.append(DimseListener(services))


def install_routes(api: FastAPI) -> None:
    """Mount this part's HTTP routes: DICOMweb under /dicomweb (:mod:`salus.dicom.web`)."""
    from salus.dicom.web import install_dicomweb

    install_dicomweb(api)
