"""Operational datasets of each hospital as CSV, in the published schemas
(``src/salus/warehouse/datasets/definitions.py``, ``salus datasets template``):
staff, equipment, medicine stock, bed occupancy and quality indicators for the
network's reporting month.

Each file is drawn from its own :class:`random.Random` seeded with
``"<seed>:<org>:<dataset>"``, so the CSVs do not depend on how many patients
were drawn before them. Values obey the schemas' rules (closing stock at most
opening + received - consumed, occupied bed-days at most beds x days,
readmissions at most discharges).
"""

from __future__ import annotations

import calendar
import csv
import io
import random

from salus.demo.catalog import NAMES, PRESCRIPTIONS, WARDS, HospitalSpec
from salus.demo.model import Network

__all__ = ["DATASETS", "dataset_csv"]

DATASETS = ("staff", "equipment", "medicines", "beds", "quality")
_ROLES = ("doctor", "doctor", "nurse", "nurse", "nurse", "midwife", "pharmacist", "technician")
_EQUIPMENT = (
    ("ct", "Siemens", "SOMATOM go.Up"),
    ("mri", "GE", "SIGNA Explorer"),
    ("xray", "Philips", "DigitalDiagnost C90"),
    ("ultrasound", "Samsung Medison", "HS40"),
    ("ventilator", "Dräger", "Evita V300"),
    ("dialysis", "Fresenius", "5008S"),
    ("monitor", "Mindray", "BeneVision N12"),
    ("infusion_pump", "B. Braun", "Infusomat Space"),
)
_UNITS = {"capsule": "capsule", "vial": "vial"}
_INDICATORS = ("incidents", "infections", "falls", "pressure_ulcers", "medication_errors")


def _days(period: str) -> int:
    return calendar.monthrange(int(period[:4]), int(period[5:7]))[1]


def _rows(network: Network, spec: HospitalSpec, name: str) -> list[list[object]]:
    rng = random.Random(f"{network.seed}:{spec.org_id}:{name}")  # noqa: S311 - synthetic
    org, period = spec.org_id, network.period
    scale = max(1, network.size.patients // 10)
    rows: list[list[object]] = []
    if name == "staff":
        for n in range(4 + 2 * scale):
            script = rng.choice(spec.scripts)
            gender = rng.choice(("female", "male"))
            rows.append([
                org, period, f"S{n + 1:04d}", rng.choice(NAMES[script]["family"]),
                rng.choice(NAMES[script][gender]), gender, rng.choice(_ROLES),
                rng.choice(WARDS)[2], rng.choice(("1.0", "1.0", "0.8", "0.5")),
                f"{rng.randrange(2005, 2025)}-{rng.randrange(1, 13):02d}-01",
            ])  # fmt: skip
    elif name == "equipment":
        for n, (kind, maker, model) in enumerate(_EQUIPMENT):
            down = rng.choice((0, 0, 0, 4, 12, 36))
            reason = rng.choice(("maintenance", "breakdown", "supplies")) if down else ""
            status = "inactive" if down > 30 else "active"
            rows.append([org, period, f"EQ-{n + 1:03d}", kind, maker, model, status, down, reason])
    elif name == "medicines":
        for atc, text, _ in PRESCRIPTIONS:
            unit = next((u for key, u in _UNITS.items() if key in text), "tablet")
            opening = rng.randrange(200, 5000)
            received = rng.choice((0, 500, 1000, 2000))
            consumed = min(opening + received, rng.randrange(100, 3000))
            closing = opening + received - consumed
            stockout = 0 if closing else rng.randrange(1, 8)
            code = f"P-{atc}"
            rows.append([org, period, code, text, atc, unit, opening, received, consumed,
                         closing, stockout])  # fmt: skip
    elif name == "beds":
        days = _days(period)
        for ward, kind, title in WARDS:
            beds = rng.randrange(8, 40) * scale
            occupied = int(beds * days * rng.uniform(0.55, 0.98))
            admissions = rng.randrange(20, 120) * scale
            rows.append([org, period, ward, title, kind, beds, occupied, admissions,
                         max(0, admissions - rng.randrange(0, 10))])  # fmt: skip
    else:  # quality
        for indicator in _INDICATORS:
            ward, _, _ = rng.choice(WARDS)
            rows.append([org, period, indicator, ward, rng.randrange(0, 8),
                         rng.randrange(300, 1500)])  # fmt: skip
        discharges = rng.randrange(100, 400)
        rows.append([org, period, "readmissions_30d", "", rng.randrange(0, discharges // 10),
                     discharges])  # fmt: skip
    return rows


_HEADERS = {
    "staff": ["org", "period", "staff_id", "family_name", "given_name", "gender", "role",
              "department", "fte", "start_date"],
    "equipment": ["org", "period", "device_id", "device_type", "manufacturer", "model",
                  "status", "downtime_hours", "downtime_reason"],
    "medicines": ["org", "period", "product_code", "product_name", "atc_code", "unit",
                  "opening_stock", "received", "consumed", "closing_stock", "stockout_days"],
    "beds": ["org", "period", "ward_id", "ward_name", "ward_type", "beds",
             "occupied_bed_days", "admissions", "discharges"],
    "quality": ["org", "period", "indicator", "ward_id", "numerator", "denominator"],
}  # fmt: skip


def dataset_csv(network: Network, spec: HospitalSpec, name: str) -> tuple[bytes, int]:
    """(UTF-8 CSV bytes, number of rows) of one dataset of one hospital."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_HEADERS[name])
    rows = _rows(network, spec, name)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8"), len(rows)
