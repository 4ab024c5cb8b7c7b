"""Table definitions of the DICOM part (SQLAlchemy Core), on the shared MetaData.

The image index (PS3.4 C.6.1.1 / C.6.2.1 keys, PS3.18 10.6 QIDO-RS keys):
one row per patient, study, series and instance. Every row carries the
organization that sent it (``org_id``, the tenant) and studies carry the
FHIR ``Patient`` id they are linked to (``patient_key``), the two columns the
policy engine filters on. Text columns hold values as received; a ``*_norm``
column next to a PN holds the upper-cased form for case-insensitive matching
and ``*_key`` columns hold times padded for range comparison.

An instance's DICOM JSON metadata (PS3.18 F.2, bulk data replaced by
BulkDataURI) is kept sealed in ``dicom_instances.metadata_json`` so that study
metadata never needs the Part-10 files, which live in the blob store
(``blob_digest``).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    UniqueConstraint,
)

from salus.db.tables import metadata
from salus.db.types import BigIntPK, UTCDateTime

__all__ = [
    "dicom_instances",
    "dicom_patients",
    "dicom_series",
    "dicom_series_requests",
    "dicom_studies",
    "metadata",
]

#: PS3.5 6.2: UI 64, LO 64, SH 16, PN 64 per component group (3 groups, 324 with separators).
_UI = 64
_LO = 64
_SH = 16
_PN = 324
_CS = 16

dicom_patients = Table(
    "dicom_patients",
    metadata,
    Column("pk", BigIntPK, primary_key=True, autoincrement=True),
    Column("org_id", String(64), nullable=False),
    Column("patient_id", String(_LO), nullable=False),  # (0010,0020); "" when absent
    Column("issuer", String(_LO), nullable=False),  # (0010,0021); "" when absent
    Column("patient_name", String(_PN)),
    Column("patient_name_norm", String(_PN)),
    Column("birth_date", String(8)),
    Column("sex", String(_CS)),
    #: The linked FHIR Patient's id (set by the ImagingStudy sync).
    Column("patient_key", String(64)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("org_id", "patient_id", "issuer"),
)
Index("ix_dicom_patients_patient_id", dicom_patients.c.patient_id)
Index("ix_dicom_patients_name_norm", dicom_patients.c.patient_name_norm)

dicom_studies = Table(
    "dicom_studies",
    metadata,
    Column("pk", BigIntPK, primary_key=True, autoincrement=True),
    Column("study_uid", String(_UI), nullable=False, unique=True),
    Column("patient_pk", BigInteger, ForeignKey("dicom_patients.pk"), nullable=False),
    Column("org_id", String(64), nullable=False),
    Column("patient_key", String(64)),
    Column("study_date", String(8)),
    Column("study_time", String(_SH)),
    Column("study_time_key", String(13)),
    Column("accession_number", String(_SH)),
    Column("accession_issuer", String(_LO)),
    Column("referring_physician_name", String(_PN)),
    Column("referring_physician_name_norm", String(_PN)),
    Column("study_id", String(_SH)),
    Column("study_description", String(_LO)),
    Column("modalities", String(200)),  # ModalitiesInStudy, backslash-separated
    Column("num_series", Integer, nullable=False),
    Column("num_instances", Integer, nullable=False),
    #: The ImagingStudy that mirrors this study, and whether a sync is queued.
    Column("fhir_id", String(64)),
    Column("fhir_sync_pending", Boolean, nullable=False),
    #: When the last instance arrived, and when the "study stable" check runs.
    Column("last_instance_at", UTCDateTime, nullable=False),
    Column("stable_check_at", UTCDateTime),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)
Index("ix_dicom_studies_patient_pk", dicom_studies.c.patient_pk)
Index("ix_dicom_studies_org_date", dicom_studies.c.org_id, dicom_studies.c.study_date)
Index("ix_dicom_studies_date", dicom_studies.c.study_date)
Index("ix_dicom_studies_accession", dicom_studies.c.accession_number)
Index("ix_dicom_studies_patient_key", dicom_studies.c.patient_key)

dicom_series = Table(
    "dicom_series",
    metadata,
    Column("pk", BigIntPK, primary_key=True, autoincrement=True),
    Column("series_uid", String(_UI), nullable=False, unique=True),
    Column("study_pk", BigInteger, ForeignKey("dicom_studies.pk"), nullable=False),
    Column("org_id", String(64), nullable=False),
    Column("modality", String(_CS)),
    Column("series_number", Integer),
    Column("series_description", String(_LO)),
    Column("body_part_examined", String(_CS)),
    Column("laterality", String(_CS)),
    Column("series_date", String(8)),
    Column("series_time", String(_SH)),
    Column("pps_start_date", String(8)),
    Column("pps_start_time", String(_SH)),
    Column("pps_start_time_key", String(13)),
    Column("num_instances", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)
Index("ix_dicom_series_study_pk", dicom_series.c.study_pk)
Index("ix_dicom_series_modality", dicom_series.c.modality)

dicom_instances = Table(
    "dicom_instances",
    metadata,
    Column("pk", BigIntPK, primary_key=True, autoincrement=True),
    Column("sop_instance_uid", String(_UI), nullable=False, unique=True),
    Column("series_pk", BigInteger, ForeignKey("dicom_series.pk"), nullable=False),
    Column("study_pk", BigInteger, ForeignKey("dicom_studies.pk"), nullable=False),
    Column("org_id", String(64), nullable=False),
    Column("sop_class_uid", String(_UI), nullable=False),
    Column("instance_number", Integer),
    Column("rows", Integer),
    Column("columns", Integer),
    Column("number_of_frames", Integer),
    Column("bits_allocated", Integer),
    Column("content_date", String(8)),
    Column("content_time", String(_SH)),
    Column("transfer_syntax_uid", String(_UI), nullable=False),
    #: SHA-256 of the Part-10 file as received (blob store address) and its size.
    Column("blob_digest", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    #: Byte offset of the data set after the File Meta Information.
    Column("dataset_offset", Integer, nullable=False),
    #: DICOM JSON (PS3.18 F.2), sealed for ``dicom:<SOPInstanceUID>:<digest>``.
    Column("metadata_json", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)
Index("ix_dicom_instances_series_pk", dicom_instances.c.series_pk)
Index("ix_dicom_instances_study_pk", dicom_instances.c.study_pk)
Index("ix_dicom_instances_blob_digest", dicom_instances.c.blob_digest)

#: The Request Attributes Sequence (0040,0275) items of a series' instances, for
#: sequence matching (PS3.4 C.2.2.2.6; QIDO-RS series keys ``RequestAttributesSequence.
#: RequestedProcedureID`` / ``.ScheduledProcedureStepID``, PS3.18 10.6.1.2). Absent
#: values are "" so that the unique constraint holds.
dicom_series_requests = Table(
    "dicom_series_requests",
    metadata,
    Column("pk", BigIntPK, primary_key=True, autoincrement=True),
    Column("series_pk", BigInteger, ForeignKey("dicom_series.pk"), nullable=False),
    Column("requested_procedure_id", String(_SH), nullable=False),
    Column("scheduled_step_id", String(_SH), nullable=False),
    UniqueConstraint(
        "series_pk",
        "requested_procedure_id",
        "scheduled_step_id",
        name="uq_dicom_series_requests_keys",
    ),
)
Index("ix_dicom_series_requests_procedure", dicom_series_requests.c.requested_procedure_id)
Index("ix_dicom_series_requests_step", dicom_series_requests.c.scheduled_step_id)
