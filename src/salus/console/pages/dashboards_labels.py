"""The dashboards' labels: indicator titles, descriptions and units, dimensions
and their values, as translatable strings (``docs/console.md``, "Languages").

The indicator definitions are data in English
(``salus/warehouse/indicators/definitions/*.json``); a title or description is
translated only while the definition still says what was translated, so a
changed definition shows its new English text rather than an old translation.
"""

from __future__ import annotations

from salus.console import i18n
from salus.console.i18n import N_
from salus.warehouse.indicators.definitions_index import Indicator

__all__ = ["DIMENSION_TITLES", "VALUE_LABELS", "description_of", "title_of", "unit_of"]

_ = i18n.gettext

TITLES = {
    "admissions": N_("Admissions"),
    "average-length-of-stay": N_("Average length of stay"),
    "bed-occupancy": N_("Bed occupancy rate"),
    "data-completeness": N_("Data completeness"),
    "data-timeliness": N_("Data timeliness"),
    "diagnoses-by-icd10-chapter": N_("Diagnoses by ICD-10 chapter"),
    "discharges": N_("Discharges"),
    "equipment-availability": N_("Equipment availability"),
    "imaging-volume-by-modality": N_("Imaging volume by modality"),
    "in-hospital-mortality": N_("In-hospital mortality"),
    "laboratory-volume": N_("Laboratory volume"),
    "medicine-stock-outs": N_("Medicine stock-outs"),
    "readmissions-30d": N_("Readmissions within 30 days"),
    "staff-per-bed": N_("Staff per bed"),
}
UNITS = {"count": "", "days": N_("days"), "%": "%", "FTE per bed": N_("FTE per bed")}
DIMENSION_TITLES = {"sex": N_("Sex"), "age_band": N_("Age band"), "ward": N_("Ward")}
VALUE_LABELS = {
    "female": N_("female"),
    "male": N_("male"),
    "other": N_("other"),
    "unknown": N_("unknown"),
}

DESCRIPTIONS = {
    "admissions": N_("Inpatient encounters (class IMP) that started in the month."),
    "average-length-of-stay": N_(
        "Mean length of stay in days (discharge date minus admission date) of the inpatient "
        "stays that ended in the month."
    ),
    "bed-occupancy": N_(
        "Occupied bed-days as a percentage of available bed-days (staffed beds times days in "
        "the month), from the beds dataset."
    ),
    "data-completeness": N_(
        "Monthly operational datasets (staff, equipment, medicines, beds) submitted for the "
        "month, as a percentage of the four expected, per hospital (every hospital, for every"
        " month any hospital reported)."
    ),
    "data-timeliness": N_(
        "Monthly operational datasets whose first accepted submission for the month came by "
        "the 15th of the following month (UTC), as a percentage of the four expected, per "
        "hospital."
    ),
    "diagnoses-by-icd10-chapter": N_(
        "Conditions coded in ICD-10 (system http://hl7.org/fhir/sid/icd-10) recorded in an "
        "encounter of the month, counted per ICD-10 chapter (I to XXII); sorted, the first "
        "rows are the top chapters."
    ),
    "discharges": N_("Inpatient encounters (class IMP) that ended in the month (deaths included)."),
    "equipment-availability": N_(
        "Device-hours available (hours in the month minus downtime) as a percentage of "
        "device-hours in the month, over the major devices of the equipment dataset."
    ),
    "imaging-volume-by-modality": N_(
        "ImagingStudies started in the month per DICOM modality (first modality code), "
        "attributed to the hospital of their encounter."
    ),
    "in-hospital-mortality": N_(
        "Inpatient stays that ended in death (hospitalization.dischargeDisposition 'exp') as "
        "a percentage of the stays that ended in the month."
    ),
    "laboratory-volume": N_(
        "Laboratory Observations (category 'laboratory') made in the month, attributed to the"
        " hospital of their encounter."
    ),
    "medicine-stock-outs": N_(
        "Products out of stock at least one day in the month as a percentage of the products "
        "reported (medicines dataset)."
    ),
    "readmissions-30d": N_(
        "Live discharges followed by an inpatient admission of the same patient (in any "
        "hospital of the network) within 30 days, as a percentage of the live discharges of "
        "the month; attributed to the discharging hospital."
    ),
    "staff-per-bed": N_(
        "Full-time equivalents of staff (staff dataset) per staffed bed (beds dataset)."
    ),
}


def _translated(table: dict[str, str], key: str, english: str) -> str:
    known = table.get(key)
    return _(known) if known == english else english


def title_of(ind: Indicator) -> str:
    return _translated(TITLES, ind.id, ind.title)


def description_of(ind: Indicator) -> str:
    return _translated(DESCRIPTIONS, ind.id, ind.description)


def unit_of(ind: Indicator) -> str:
    unit = UNITS.get(ind.unit, ind.unit)
    return _(unit) if unit else ""
