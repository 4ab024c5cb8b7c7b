"""Fixed material the generator draws from: the fictional network, names in
several writing systems and the clinical codes.

Every organization, person and place here is invented; any resemblance to a
real hospital or person is accidental. Codes are real: ICD-10 (WHO,
``http://hl7.org/fhir/sid/icd-10``), LOINC (``http://loinc.org``) with UCUM
units (``http://unitsofmeasure.org``) and ATC (WHO, the operational datasets'
list, :data:`salus.warehouse.datasets.definitions.ATC_CODES`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DIAGNOSES",
    "HOSPITALS",
    "LABS",
    "NAMES",
    "OTHER_ORGS",
    "PRESCRIPTIONS",
    "HospitalSpec",
    "Lab",
]


@dataclass(frozen=True, slots=True)
class HospitalSpec:
    """One fictional hospital and how its systems talk to Salus."""

    org_id: str
    name: str
    #: The writing systems of most of its patients (keys of :data:`NAMES`), most common first.
    scripts: tuple[str, ...]
    #: How its hospital information system sends records: "hl7" (ADT and ORU over MLLP;
    #: diagnoses and prescriptions as FHIR transactions) or "fhir" (FHIR transactions only).
    his: str
    #: MSH-4 sending facility and DICOM calling AE title.
    facility: str
    ae_title: str
    timezone: str
    utc_offset: str  # for HL7 and FHIR times, e.g. "+07:00"
    city: str
    country: str  # ISO 3166-1 alpha-3 (HL7 XAD-6) / alpha-2 (FHIR)


HOSPITALS: tuple[HospitalSpec, ...] = (
    HospitalSpec(
        "song-hong",
        "Bệnh viện Đa khoa Sông Hồng",
        ("vi", "vi", "vi", "en", "ko"),
        "hl7",
        "SONGHONG",
        "SONGHONG_PACS",
        "Asia/Ho_Chi_Minh",
        "+07:00",
        "Hà Nội",
        "VN",
    ),
    HospitalSpec(
        "hanbit",
        "한빛대학교병원",
        ("ko", "ko", "ko", "vi", "en"),
        "fhir",
        "HANBIT",
        "HANBIT_PACS",
        "Asia/Seoul",
        "+09:00",
        "서울",
        "KR",
    ),
    HospitalSpec(
        "val-de-loire",
        "Centre Hospitalier du Val-de-Loire",
        ("fr", "fr", "fr", "ar", "vi"),
        "hl7",
        "CHVL",
        "CHVL_PACS",
        "Europe/Paris",
        "+01:00",
        "Orléans",
        "FR",
    ),
    HospitalSpec(
        "northbridge",
        "Northbridge General Hospital",
        ("en", "en", "ru", "fr", "ko"),
        "fhir",
        "NBGH",
        "NBGH_PACS",
        "Europe/London",
        "+00:00",
        "Northbridge",
        "GB",
    ),
)

#: (org id, name, kind) of the organizations that are not hospitals.
OTHER_ORGS: tuple[tuple[str, str, str], ...] = (
    ("network-ops", "Salus network operations", "operator"),
    ("health-authority", "Sở Y tế Liên vùng (Inter-regional Health Authority)", "authority"),
    ("research-institute", "Institut de recherche en santé publique Mékong-Loire", "research"),
)

#: Per writing system: family names, female and male given names (all common,
#: none a particular person), and whether the family name comes first.
NAMES: dict[str, dict[str, tuple[str, ...]]] = {
    "vi": {
        "family": ("Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Đặng", "Bùi"),
        "female": ("Thị Lan", "Ngọc Hà", "Thu Trang", "Thị Hương", "Minh Thư", "Bảo Ngọc", "Yến"),
        "male": ("Văn Minh", "Đức Anh", "Quang Huy", "Hữu Phúc", "Tuấn Kiệt", "Việt Dũng", "Nam"),
    },
    "ko": {
        "family": ("김", "이", "박", "최", "정", "강", "조", "윤", "장", "임"),
        "female": ("서연", "하은", "지우", "수아", "서윤", "민서", "예은"),
        "male": ("민준", "지훈", "도윤", "예준", "현우", "시우", "주원"),
    },
    "fr": {
        "family": ("Martin", "Lefèvre", "Dubois", "Girard", "Moreau", "Rousseau", "Bénard"),
        "female": ("Élodie", "Hélène", "Anaïs", "Zoé", "Cécile", "Maëlle"),
        "male": ("François", "Jérôme", "Loïc", "Noël", "Théo", "Gaël"),
    },
    "en": {
        "family": ("Smith", "Taylor", "O'Brien", "Davies", "Clarke", "Hughes", "Walker"),
        "female": ("Olivia", "Amelia", "Grace", "Isla", "Freya", "Mary-Jane"),
        "male": ("James", "Oliver", "Harry", "Jack", "George", "Arthur"),
    },
    "ru": {
        "family": ("Иванов", "Смирнов", "Кузнецов", "Попов", "Соколов"),
        "female": ("Анна", "Ольга", "Мария", "Екатерина"),
        "male": ("Дмитрий", "Сергей", "Алексей", "Иван"),
    },
    "ar": {
        "family": ("الحسن", "العلي", "المنصور", "الخطيب"),
        "female": ("فاطمة", "ليلى", "مريم", "نور"),
        "male": ("محمد", "أحمد", "يوسف", "عمر"),
    },
}

#: Writing systems whose family name is written first (used in display names).
FAMILY_FIRST = frozenset({"vi", "ko"})

#: ICD-10 (WHO) code -> display.
DIAGNOSES: tuple[tuple[str, str], ...] = (
    ("I10", "Essential (primary) hypertension"),
    ("E11.9", "Type 2 diabetes mellitus without complications"),
    ("J18.9", "Pneumonia, unspecified"),
    ("J45.9", "Asthma, unspecified"),
    ("N39.0", "Urinary tract infection, site not specified"),
    ("A09", "Other gastroenteritis and colitis of infectious and unspecified origin"),
    ("I21.9", "Acute myocardial infarction, unspecified"),
    ("S72.0", "Fracture of neck of femur"),
    ("E78.5", "Hyperlipidaemia, unspecified"),
    ("K35.8", "Other and unspecified acute appendicitis"),
    ("C34.9", "Malignant neoplasm: Bronchus or lung, unspecified"),
    ("I63.9", "Cerebral infarction, unspecified"),
)


@dataclass(frozen=True, slots=True)
class Lab:
    loinc: str
    display: str
    unit: str  # UCUM
    low: float
    high: float
    #: Spread of generated values around the range (values outside are flagged).
    mean: float
    sd: float
    decimals: int


LABS: tuple[Lab, ...] = (
    Lab("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 12.0, 16.0, 13.5, 1.8, 1),
    Lab("6690-2", "Leukocytes [#/volume] in Blood", "10*3/uL", 4.0, 10.0, 7.5, 2.5, 1),
    Lab("777-3", "Platelets [#/volume] in Blood", "10*3/uL", 150, 400, 250, 70, 0),
    Lab("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 70, 99, 100, 25, 0),
    Lab("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.2, 1.0, 0.3, 2),
    Lab("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 135, 145, 139, 3.5, 0),
    Lab("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.5, 5.1, 4.2, 0.5, 1),
    Lab("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4.0, 5.6, 5.8, 1.0, 1),
)

#: (ATC code on the datasets' list, product text, dosage text).
PRESCRIPTIONS: tuple[tuple[str, str, str], ...] = (
    ("C08CA01", "Amlodipine 5 mg tablet", "5 mg once daily"),
    ("A10BA02", "Metformin 500 mg tablet", "500 mg twice daily with meals"),
    ("J01CA04", "Amoxicillin 500 mg capsule", "500 mg three times daily for 7 days"),
    ("J01DD04", "Ceftriaxone 1 g vial", "1 g IV once daily"),
    ("C10AA01", "Simvastatin 20 mg tablet", "20 mg at night"),
    ("B01AC06", "Acetylsalicylic acid 81 mg tablet", "81 mg once daily"),
    ("A02BC01", "Omeprazole 20 mg capsule", "20 mg before breakfast"),
    ("M01AE01", "Ibuprofen 400 mg tablet", "400 mg up to three times daily"),
    ("C07AB07", "Bisoprolol 5 mg tablet", "5 mg once daily"),
    ("J01MA02", "Ciprofloxacin 500 mg tablet", "500 mg twice daily for 5 days"),
)

#: Imaging: (modality, study description, body part, series description).
IMAGING: tuple[tuple[str, str, str, str], ...] = (
    ("CT", "CT chest without contrast", "CHEST", "Axial 5mm"),
    ("CT", "CT head without contrast", "HEAD", "Axial 5mm"),
    ("CR", "Chest X-ray PA", "CHEST", "PA"),
    ("MR", "MRI brain", "BRAIN", "T2 axial"),
)

WARDS: tuple[tuple[str, str, str], ...] = (
    ("W-MED", "medical", "Internal medicine"),
    ("W-SUR", "surgical", "Surgery"),
    ("W-ICU", "icu", "Intensive care"),
    ("W-MAT", "maternity", "Maternity"),
    ("W-PED", "pediatric", "Paediatrics"),
)

STREETS: dict[str, tuple[str, ...]] = {
    "VN": ("12 Phố Huế", "45 Đường Láng", "8 Ngõ Trạm", "210 Kim Mã"),
    "KR": ("세종대로 110", "테헤란로 152", "올림픽로 300"),
    "FR": ("3 rue des Carmes", "18 quai du Châtelet", "7 place du Martroi"),
    "GB": ("14 Mill Lane", "2 Station Road", "77 High Street"),
}
