"""Synthetic DICOM images: CT, CR and MR Part-10 files with plausible headers
and an ellipse phantom with noise as pixel data.

* CT Image Storage (PS3.3 A.3): 12 bits stored in 16, Hounsfield units through
  Rescale Slope 1 / Intercept -1024 (C.11.1.1.2), a soft-tissue window,
  contiguous axial slices (Image Position/Orientation, Slice Thickness);
* MR Image Storage (A.4): 12-bit magnitude, spin echo, 1.5 T, TE/TR;
* Computed Radiography (A.2): one 2-D chest PA image, View Position PA.

Patient ID is the hospital's MRN with Issuer of Patient ID set to the
hospital's MRN system, so that Salus links the study to the hospital's
Patient (docs/dicom.md). Explicit VR Little Endian, Specific Character Set
ISO_IR 192 (UTF-8: Vietnamese, Hangul, Cyrillic, Arabic names).
"""

from __future__ import annotations

import io
from datetime import timedelta

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from salus.demo.fhir_out import mrn_system
from salus.demo.model import Network, Registration, Study

__all__ = ["SOP_CLASSES", "instance_uid", "render_study"]

SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
}
_SEX = {"female": "F", "male": "M"}


def instance_uid(study: Study, number: int) -> str:
    """The SOP Instance UID of the ``number``-th image (1-based) of the study."""
    return f"{study.series_uid}.{number}"


def _phantom(rng: np.random.Generator, matrix: int, modality: str, z: float) -> np.ndarray:
    """An ellipse phantom (body, two organs, a bright ring) plus Gaussian noise."""
    y, x = np.mgrid[-1 : 1 : matrix * 1j, -1 : 1 : matrix * 1j]
    if modality == "CT":  # HU
        image = np.full((matrix, matrix), -1000.0)
        body, organ, bone, noise = 40.0, 60.0, 700.0, 12.0
    elif modality == "MR":
        image = np.zeros((matrix, matrix))
        body, organ, bone, noise = 900.0, 1500.0, 300.0, 40.0
    else:  # CR: attenuation as grey levels
        image = np.full((matrix, matrix), 200.0)
        body, organ, bone, noise = 1800.0, 900.0, 3200.0, 60.0
    squeeze = 1.0 - 0.3 * abs(z)
    image[(x / 0.85) ** 2 + (y / (0.7 * squeeze)) ** 2 <= 1] = body
    for cx in (-0.35, 0.35):
        jitter = rng.normal(0, 0.02)
        image[((x - cx - jitter) / 0.22) ** 2 + (y / (0.4 * squeeze)) ** 2 <= 1] = organ
    ring = (x / 0.8) ** 2 + (y / (0.65 * squeeze)) ** 2
    image[(ring <= 1) & (ring >= 0.9)] = bone
    return image + rng.normal(0, noise, image.shape)


def _instance(
    network: Network, study: Study, reg: Registration, number: int, rng: np.random.Generator
) -> Dataset:
    spec = network.hospital(study.org_id)
    matrix = network.size.matrix
    sop_class = SOP_CLASSES[study.modality]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(instance_uid(study, number))
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = instance_uid(study, number)
    when = study.when + timedelta(seconds=number)
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study.when.strftime("%Y%m%d")
    ds.StudyTime = study.when.strftime("%H%M%S")
    ds.SeriesTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.AccessionNumber = study.accession
    ds.Modality = study.modality
    ds.Manufacturer = "Salus Demo Imaging"
    ds.InstitutionName = spec.name
    ds.StationName = spec.ae_title[:16]
    ds.StudyDescription = study.description
    ds.SeriesDescription = study.series_description
    ds.ReferringPhysicianName = ""
    ds.PatientName = f"{reg.family}^{reg.given}"
    ds.PatientID = reg.mrn
    ds.IssuerOfPatientID = mrn_system(reg.org_id)
    ds.PatientBirthDate = reg.birth_date.strftime("%Y%m%d") if reg.birth_date else ""
    ds.PatientSex = _SEX.get(reg.gender, "O")
    ds.BodyPartExamined = study.body_part
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = study.series_uid
    ds.StudyID = study.accession[-6:]
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.PatientOrientation = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = matrix
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    spacing = 400.0 / matrix
    ds.PixelSpacing = [f"{spacing:.4f}", f"{spacing:.4f}"]
    z = (number - 1) / max(1, study.instances - 1) * 2 - 1 if study.instances > 1 else 0.0
    pixels = _phantom(rng, matrix, study.modality, z)
    if study.modality in ("CT", "MR"):
        thickness = 5.0
        ds.SliceThickness = f"{thickness:.1f}"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-200.0, -200.0, round((number - 1) * thickness, 1)]
        ds.SliceLocation = f"{(number - 1) * thickness:.1f}"
        ds.FrameOfReferenceUID = f"{study.study_uid}.0"
        ds.PositionReferenceIndicator = ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    if study.modality == "CT":
        ds.KVP = "120"
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        stored = pixels + 1024
    elif study.modality == "MR":
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.EchoTime = "90"
        ds.RepetitionTime = "4000"
        ds.MagneticFieldStrength = "1.5"
        ds.ImagingFrequency = "63.87"
        ds.WindowCenter = "1000"
        ds.WindowWidth = "2000"
        stored = pixels
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.ViewPosition = "PA"
        ds.KVP = "110"
        ds.WindowCenter = "2048"
        ds.WindowWidth = "4096"
        stored = pixels
    ds.PixelData = np.clip(np.rint(stored), 0, 4095).astype("<u2").tobytes()
    return ds


def render_study(network: Network, study: Study, seed: int) -> list[tuple[str, bytes]]:
    """(SOP Instance UID, Part-10 bytes) of each image of the study, deterministic."""
    reg = next(r for r in network.registrations if r.org_id == study.org_id and r.mrn == study.mrn)
    rng = np.random.default_rng([seed, int(study.series_uid.rsplit(".", 1)[-1]) % 2**63])
    out: list[tuple[str, bytes]] = []
    for number in range(1, study.instances + 1):
        ds = _instance(network, study, reg, number, rng)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append((ds.SOPInstanceUID, buffer.getvalue()))
    return out
