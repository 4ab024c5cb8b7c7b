"""The synthetic network generator: one :class:`random.Random` seeded by the
caller draws everything, in a fixed order, so that the same seed, size and
reference date give the same network (and the same bytes once rendered).

Realism, on purpose: names in the writing systems of each hospital's
population (Vietnamese with its diacritics, Hangul, French, English, Cyrillic,
Arabic); some people are registered at two hospitals under unrelated local
MRNs, the second time with a typo, without diacritics or with fields missing;
lab values drawn around their reference range so that some are flagged.
"""

from __future__ import annotations

import random
import unicodedata
from dataclasses import replace
from datetime import date, datetime, timedelta

from salus.demo.catalog import (
    DIAGNOSES,
    HOSPITALS,
    IMAGING,
    LABS,
    NAMES,
    PRESCRIPTIONS,
    STREETS,
    WARDS,
    HospitalSpec,
)
from salus.demo.model import (
    SIZES,
    Diagnosis,
    Encounter,
    LabResult,
    Login,
    Network,
    Person,
    Prescription,
    Registration,
    Size,
    Study,
)

__all__ = ["generate", "reporting_period", "size_named"]

#: pydicom's UID root for generated UIDs (PS3.5 B.2: a registered root + our suffix).
UID_ROOT = "1.2.826.0.1.3680043.8.498."
_PASSWORD_WORDS = (
    "lotus", "kimchi", "loire", "harbour", "mekong", "hanok", "bridge", "pho", "crepe",
    "monsoon", "jade", "river", "maple", "cedar", "lantern", "orchid",
)  # fmt: skip


def size_named(name: str, **overrides: int | None) -> Size:
    """A preset with some of its numbers replaced (None: keep the preset's)."""
    base = SIZES[name]
    changes = {k: v for k, v in overrides.items() if v is not None}
    return replace(base, **changes) if changes else base


def reporting_period(as_of: date) -> str:
    """The month the operational datasets report on: the one before ``as_of``'s."""
    first = as_of.replace(day=1)
    previous = first - timedelta(days=1)
    return f"{previous.year:04d}-{previous.month:02d}"


def _strip_marks(text: str) -> str:
    """``Nguyễn`` → ``Nguyen``, as systems without Unicode still write it."""
    decomposed = unicodedata.normalize("NFD", text.replace("Đ", "D").replace("đ", "d"))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _typo(rng: random.Random, text: str) -> str:
    """Swap two neighbouring letters, or double one."""
    if len(text) < 3:
        return text + text[-1]
    i = rng.randrange(len(text) - 1)
    if rng.random() < 0.5 and text[i] != text[i + 1]:
        return text[:i] + text[i + 1] + text[i] + text[i + 2 :]
    return text[: i + 1] + text[i] + text[i + 1 :]


class _Draw:
    """The drawing state: the one random source and the running numbers."""

    def __init__(self, seed: int, size: Size, as_of: date) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - synthetic data, reproducible by design
        self.seed = seed
        self.size = size
        self.as_of = as_of
        self.people: list[Person] = []
        self.counters: dict[str, int] = {}

    def next(self, key: str) -> int:
        self.counters[key] = self.counters.get(key, 0) + 1
        return self.counters[key]

    def uid(self) -> str:
        return f"{UID_ROOT}{self.seed % 1_000_000}.{self.rng.getrandbits(64)}"

    def person(self, script: str) -> Person:
        rng = self.rng
        gender = rng.choice(("female", "male"))
        pool = NAMES[script]
        age_days = rng.randrange(365 * 1, 365 * 90)
        person = Person(
            key=f"P{len(self.people) + 1:05d}",
            script=script,
            family=rng.choice(pool["family"]),
            given=rng.choice(pool[gender]),
            gender=gender,
            birth_date=self.as_of - timedelta(days=age_days),
            national_id=f"{rng.randrange(10**11, 10**12)}" if rng.random() < 0.7 else None,
            phone=f"+{rng.randrange(10**9, 10**10)}" if rng.random() < 0.8 else None,
        )
        self.people.append(person)
        return person

    def registration(self, spec: HospitalSpec, person: Person, imperfect: bool) -> Registration:
        rng = self.rng
        number = self.next(f"mrn:{spec.org_id}")
        reg = Registration(
            org_id=spec.org_id,
            mrn=f"{spec.facility[:2]}{rng.randrange(10, 99)}{number:05d}",
            person=person.key,
            family=person.family,
            given=person.given,
            gender=person.gender,
            birth_date=person.birth_date,
            national_id=person.national_id,
            phone=person.phone,
            address=f"{rng.choice(STREETS[spec.country])}, {spec.city}",
        )
        if imperfect:
            quirk = rng.choice(("typo", "no-marks", "no-birth-date", "no-phone", "no-gender"))
            if quirk == "no-marks" and (
                person.script not in ("vi", "fr") or _strip_marks(reg.family) == reg.family
            ):
                quirk = "typo"
            if quirk == "typo" and len(reg.family) >= 3:
                reg.family = _typo(rng, reg.family)
                reg.quirks.append("typo in the family name")
            elif quirk == "typo":  # a one-syllable Korean family name: the given name
                reg.given = _typo(rng, reg.given)
                reg.quirks.append("typo in the given name")
            elif quirk == "no-marks":
                reg.family, reg.given = _strip_marks(reg.family), _strip_marks(reg.given)
                reg.quirks.append("name without diacritics")
            elif quirk == "no-birth-date":
                reg.birth_date = None
                reg.quirks.append("no birth date")
            elif quirk == "no-phone":
                reg.phone = None
                reg.quirks.append("no telephone")
            else:
                reg.gender = "unknown"
                reg.quirks.append("gender unknown")
        if rng.random() < 0.15:
            reg.address = None
            reg.quirks.append("no address")
        if reg.national_id and rng.random() < 0.3:
            reg.national_id = None
            reg.quirks.append("national id not recorded")
        for _ in range(rng.randint(1, self.size.max_encounters)):
            reg.encounters.append(self.encounter(spec))
        reg.encounters.sort(key=lambda e: e.start)
        return reg

    def encounter(self, spec: HospitalSpec) -> Encounter:
        rng = self.rng
        cls = rng.choice(("AMB", "AMB", "IMP", "EMER"))
        start = datetime.combine(self.as_of, datetime.min.time()) + timedelta(
            days=-rng.randrange(2, 365), minutes=rng.randrange(7 * 60, 19 * 60)
        )
        length = timedelta(days=rng.randint(1, 9)) if cls == "IMP" else timedelta(hours=2)
        ward_code, _, _ = rng.choice(WARDS)
        enc = Encounter(
            visit=f"V{spec.facility[:2]}{self.next('visit:' + spec.org_id):06d}",
            cls=cls,
            start=start,
            end=start + length,
            ward=ward_code,
        )
        for code, display in rng.sample(DIAGNOSES, rng.randint(1, 2)):
            enc.diagnoses.append(Diagnosis(code, display))
        for lab in rng.sample(LABS, rng.randint(2, 4)):
            value = round(rng.gauss(lab.mean, lab.sd), lab.decimals)
            value = max(value, 0.1 if lab.decimals else 1.0)
            flag = "H" if value > lab.high else "L" if value < lab.low else "N"
            enc.labs.append(LabResult(lab, value, flag))
        for atc, text, dosage in rng.sample(PRESCRIPTIONS, rng.randint(0, 2)):
            enc.prescriptions.append(Prescription(atc, text, dosage))
        return enc

    def studies(self, spec: HospitalSpec, regs: list[Registration], index: int) -> list[Study]:
        rng = self.rng
        out: list[Study] = []
        for n in range(self.size.studies):
            reg = rng.choice(regs)
            modality, description, body, series = IMAGING[(n + index) % len(IMAGING)]
            enc = rng.choice(reg.encounters)
            out.append(
                Study(
                    org_id=spec.org_id,
                    mrn=reg.mrn,
                    modality=modality,
                    description=description,
                    body_part=body,
                    series_description=series,
                    study_uid=self.uid(),
                    series_uid=self.uid(),
                    accession=f"A{spec.facility[:2]}{self.next('acc:' + spec.org_id):06d}",
                    when=enc.start + timedelta(minutes=rng.randrange(20, 90)),
                    instances=1 if modality == "CR" else self.size.slices,
                    # Half of each hospital's studies by DIMSE, half by DICOMweb.
                    route="c-store" if n % 2 == 0 else "stow-rs",
                )
            )
        return out

    def password(self) -> str:
        words = [self.rng.choice(_PASSWORD_WORDS) for _ in range(3)]
        return "-".join(words) + f"-{self.rng.randrange(10, 99)}"


def _logins(draw: _Draw, hospitals: tuple[HospitalSpec, ...]) -> list[Login]:
    users: list[tuple[str, str, str, str]] = [
        ("admin", "network-ops", "administrator", "Network administrator"),
        ("security", "network-ops", "security_officer", "Network security officer"),
    ]
    for spec in hospitals:
        short = spec.org_id
        users += [
            (f"{short}.doctor1", short, "clinician", f"Clinician 1, {spec.name}"),
            (f"{short}.doctor2", short, "clinician", f"Clinician 2, {spec.name}"),
            (f"{short}.steward", short, "data_steward", f"Data steward, {spec.name}"),
            (f"{short}.security", short, "security_officer", f"Security officer, {spec.name}"),
            (f"{short}.admin", short, "administrator", f"Administrator, {spec.name}"),
        ]
    users += [
        ("analyst", "health-authority", "authority_analyst", "Health authority analyst"),
        ("researcher", "research-institute", "researcher", "Researcher"),
    ]
    out = [Login("user", n, o, r, d, draw.password()) for n, o, r, d in users]
    for spec in hospitals:
        out.append(
            Login("client", f"{spec.org_id}-his", spec.org_id, "hospital_integration",
                  f"Hospital information system, {spec.name}")
        )  # fmt: skip
        out.append(
            Login("client", f"{spec.org_id}-pacs", spec.org_id, "hospital_integration",
                  f"PACS and modalities, {spec.name} (AE {spec.ae_title})")
        )  # fmt: skip
    return out


def generate(
    seed: int, size_name: str = "small", *, as_of: date, size: Size | None = None
) -> Network:
    """Draw a network. ``as_of`` is the demo's "today": every date falls before it."""
    chosen = size or SIZES[size_name]
    draw = _Draw(seed, chosen, as_of)
    rng = draw.rng
    registrations: list[Registration] = []
    by_org: dict[str, list[Registration]] = {}
    for spec in HOSPITALS:
        regs = []
        for _ in range(chosen.patients):
            person = draw.person(rng.choice(spec.scripts))
            regs.append(draw.registration(spec, person, imperfect=rng.random() < 0.2))
        by_org[spec.org_id] = regs
    # People who also go to another hospital: a new MRN there, the demographics
    # as that hospital typed them.
    for n in range(min(chosen.shared, chosen.patients * len(HOSPITALS))):
        home = HOSPITALS[n % len(HOSPITALS)]
        other = HOSPITALS[(n + 1 + rng.randrange(len(HOSPITALS) - 1)) % len(HOSPITALS)]
        first = by_org[home.org_id][n // len(HOSPITALS) % len(by_org[home.org_id])]
        person = next(p for p in draw.people if p.key == first.person)
        by_org[other.org_id].append(draw.registration(other, person, imperfect=True))
    studies: list[Study] = []
    for index, spec in enumerate(HOSPITALS):
        registrations += by_org[spec.org_id]
        studies += draw.studies(spec, by_org[spec.org_id], index)
    return Network(
        seed=seed,
        size_name=size_name,
        size=chosen,
        as_of=as_of,
        period=reporting_period(as_of),
        hospitals=HOSPITALS,
        people=draw.people,
        registrations=registrations,
        studies=studies,
        logins=_logins(draw, HOSPITALS),
    )
