"""A synthetic cohort as a FHIR Bulk Data export, for tests and benchmarks.

``generate_cohort(patients, seed=..., out=...)`` writes NDJSON files the way a
``$export`` does: one or more files per resource type (Observation split in
several), lines not sorted by patient, and a manifest. The content has the
clinical variety the plantar-cramps ruleset reads, as EHRs send it:

* lab values on both sides of every threshold (potassium 3.0 / 3.5 / 5.0,
  magnesium 0.50 / 0.70 mmol/L, sodium 145, osmolality 295, BUN/creatinine,
  urine specific gravity 1.030, eGFR 30 / 45 / 60), in mmol/L, mg/dL and
  meq/L, under serum and blood LOINC codes, with UCUM or free-text units;
* preliminary, entered-in-error, bounded (``<``) and stale (older than the
  lookback) results, and future-dated ones;
* findings in the local code system ``https://cdss.dev/fhir/CodeSystem/
  findings`` (``leg-cramps`` with body site ``calf`` and component
  ``nocturnal``, ``heel-pain``, red flags such as ``saddle-anaesthesia``...),
  present or absent;
* conditions coded in SNOMED CT or ICD-10-CM, some resolved or entered in
  error; medications as RxNorm codes from the value sets; nut allergies;
* Encounters, which the facts do not use.

Output is deterministic: the same ``patients``, ``seed`` and ``as_of`` give
byte-identical files (each patient draws from its own seeded generator, and
lines are shuffled in blocks with seeded generators). Memory is bounded by a
block of patients, not by the cohort.
"""

from __future__ import annotations

import gzip
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any

import orjson

from cdss.errors import InvalidArgument
from cdss.terminology import ICD10CM, LOCAL, LOINC, RXNORM, SNOMED, UCUM

__all__ = ["GeneratedCohort", "generate_cohort"]

_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_COND_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
_COND_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
_ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"

#: Resource types written, in manifest order.
TYPES = ("Patient", "Observation", "Condition", "MedicationRequest", "AllergyIntolerance",
         "Encounter")
_BLOCK = 2000  # patients shuffled together; bounds memory

# analyte -> the ways EHRs send it: (LOINC code, unit, factor from the canonical unit,
# unit sent as a UCUM code), and values around the thresholds in the canonical unit
_LABS: dict[str, tuple[tuple[tuple[str, str, float, bool], ...], tuple[float, ...]]] = {
    "potassium": ((("2823-3", "mmol/L", 1.0, True), ("2823-3", "meq/L", 1.0, True),
                   ("2823-3", "mEq/L", 1.0, False), ("6298-4", "mmol/L", 1.0, True),
                   ("77142-8", "mmol/l", 1.0, False)),
                  (2.6, 2.9, 3.0, 3.1, 3.4, 3.5, 3.6, 4.1, 4.4, 4.9, 5.0, 5.1, 5.6)),
    "magnesium": ((("2601-3", "mmol/L", 1.0, True), ("2601-3", "meq/L", 2.0, True),
                   ("19123-9", "mg/dL", 2.4305, True), ("19123-9", "mg/dl", 2.4305, False),
                   ("2593-2", "mmol/L", 1.0, True), ("21377-7", "mg/dL", 2.4305, True)),
                  (0.42, 0.49, 0.50, 0.51, 0.62, 0.69, 0.70, 0.71, 0.85, 0.95)),
    "sodium": ((("2951-2", "mmol/L", 1.0, True), ("2951-2", "meq/L", 1.0, True),
                ("2947-0", "mmol/L", 1.0, True)),
               (136.0, 140.0, 144.0, 145.0, 146.0, 149.0, 152.0)),
    "osmolality": ((("2692-2", "mosm/kg", 1.0, True), ("2692-2", "mOsm/kg", 1.0, False)),
                   (280.0, 290.0, 294.0, 295.0, 296.0, 302.0, 310.0)),
    "bun": ((("3094-0", "mg/dL", 1.0, True), ("6299-2", "mg/dL", 1.0, True)),
            (8.0, 14.0, 19.0, 24.0, 31.0)),
    "creatinine": ((("2160-0", "mg/dL", 1.0, True), ("38483-4", "mg/dL", 1.0, True),
                    ("14682-9", "umol/L", 88.42, True)), (0.6, 0.9, 1.0, 1.2)),
    "bun_creatinine_ratio": ((("3097-3", "{ratio}", 1.0, True),), (12.0, 19.0, 20.0, 21.0, 28.0)),
    "urine_specific_gravity": ((("2965-2", "{SG}", 1.0, True), ("5811-5", "1", 1.0, True)),
                               (1.005, 1.015, 1.025, 1.029, 1.030, 1.031, 1.035)),
    "egfr": ((("98979-8", "mL/min/{1.73_m2}", 1.0, True), ("62238-1", "mL/min/{1.73_m2}", 1.0,
                                                            True),
              ("33914-3", "mL/min/1.73m2", 1.0, False)),
             (18.0, 29.0, 30.0, 31.0, 44.0, 45.0, 46.0, 59.0, 60.0, 61.0, 88.0)),
}
# analyte -> a normal range (canonical unit) and its decimals: most results are normal
_NORMAL = {"potassium": (3.8, 4.8, 1), "magnesium": (0.75, 0.95, 2), "sodium": (137, 143, 0),
           "osmolality": (280, 292, 0), "bun": (8, 18, 0), "creatinine": (0.7, 1.1, 2),
           "bun_creatinine_ratio": (10, 18, 1), "urine_specific_gravity": (1.005, 1.025, 3),
           "egfr": (65, 110, 0)}
_LAB_ORDER = ("potassium", "magnesium", "sodium", "osmolality", "bun", "creatinine",
              "bun_creatinine_ratio", "urine_specific_gravity", "egfr")
# analyte -> probability that a patient has a result
_LAB_RATE = {"potassium": 0.7, "magnesium": 0.55, "sodium": 0.5, "osmolality": 0.2,
             "bun": 0.4, "creatinine": 0.45, "bun_creatinine_ratio": 0.05,
             "urine_specific_gravity": 0.25, "egfr": 0.45}
_LOOKBACK = {"potassium": 90, "magnesium": 90, "egfr": 90}  # others: 30 days

# finding code -> probability present among patients with symptoms
_FINDINGS = (("leg-cramps", 0.45), ("heel-pain", 0.3), ("first-step-pain", 0.2),
             ("calf-tightness", 0.2), ("limited-ankle-dorsiflexion", 0.08),
             ("low-fluid-intake", 0.12), ("high-activity", 0.15),
             ("low-back-pain-symptom", 0.2), ("radiating-leg-pain", 0.1),
             ("foot-numbness-tingling", 0.1))
_RED_FLAGS = ("saddle-anaesthesia", "bladder-dysfunction", "bowel-dysfunction",
              "bilateral-leg-symptoms", "foot-drop")

# (SNOMED CT, ICD-10-CM, display, probability)
_CONDITIONS = (
    ("202882003", "M72.2", "Plantar fasciitis", 0.12),
    ("23056005", "M54.41", "Sciatica", 0.05),
    ("279039007", "M54.50", "Low back pain", 0.1),
    ("302226006", "G62.9", "Peripheral neuropathy", 0.04),
    ("44054006", "E11.9", "Type 2 diabetes mellitus", 0.12),
    ("34095006", "E86.0", "Dehydration", 0.03),
    ("190855004", "E83.42", "Hypomagnesemia", 0.02),
    ("43339004", "E87.6", "Hypokalemia", 0.02),
    ("433144002", "N18.30", "Chronic kidney disease stage 3", 0.05),
    ("431857002", "N18.4", "Chronic kidney disease stage 4", 0.015),
    ("192970008", "G83.4", "Cauda equina syndrome", 0.003),
    ("449918009", "R25.2", "Cramp in lower leg", 0.05),
    ("38341003", "I10", "Hypertension", 0.25),
    ("195967001", "J45.909", "Asthma", 0.08),
)
# RxNorm (code, display) per class, and the probability of a class
_MEDICATIONS = (
    ((("310798", "Hydrochlorothiazide 25 MG Oral Tablet"), ("197499", "Chlorthalidone 25 MG "
      "Oral Tablet"), ("5487", "Hydrochlorothiazide")), 0.1),
    ((("313988", "Furosemide 40 MG Oral Tablet"), ("310429", "Furosemide 20 MG Oral Tablet"),
      ("197418", "Bumetanide 1 MG Oral Tablet")), 0.06),
    ((("313096", "Spironolactone 25 MG Oral Tablet"), ("351256", "eplerenone 25 MG Oral "
      "Tablet")), 0.04),
    ((("314076", "Lisinopril 10 MG Oral Tablet"), ("198188", "Ramipril 2.5 MG Oral Capsule")),
     0.12),
    ((("52175", "losartan"), ("153666", "irbesartan 150 MG Oral Tablet [Avapro]")), 0.07),
    ((("860975", "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet"),
      ("617312", "atorvastatin 10 MG Oral Tablet")), 0.2),
)
_NUT_ALLERGY = (("91935009", "Allergy to peanut"), ("91934008", "Allergy to nut"))
_OTHER_ALLERGY = (("300916003", "Latex allergy"), ("294505008", "Allergy to amoxicillin"))


@dataclass(frozen=True)
class GeneratedCohort:
    """What :func:`generate_cohort` wrote: the folder, its manifest, the files
    and the number of resources per type."""

    out: Path
    manifest: Path
    files: tuple[Path, ...]
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def patients(self) -> int:
        return self.counts.get("Patient", 0)


class _Patient:
    """The resources of one synthetic patient, drawn from its own generator."""

    def __init__(self, seed: int, index: int, as_of: datetime) -> None:
        self.rng = random.Random(f"cdss-cohort:{seed}:{index}")
        self.pid = f"pt{index:07d}"
        self.as_of = as_of
        self.serial = 0
        self.out: list[tuple[str, dict[str, Any]]] = []

    def next_id(self, prefix: str) -> str:
        self.serial += 1
        return f"{self.pid}-{prefix}{self.serial}"

    def when(self, days_back: float, *, time: bool | None = None) -> str:
        moment = self.as_of - timedelta(days=days_back)
        if time is None:
            time = self.rng.random() < 0.7
        if not time:
            return moment.date().isoformat()
        zone = self.rng.choice(("Z", "+00:00", "-05:00", "+01:00"))
        stamp = moment.replace(hour=self.rng.randrange(6, 20), minute=self.rng.randrange(60),
                               second=0, microsecond=0)
        return stamp.strftime("%Y-%m-%dT%H:%M:%S") + zone

    def add(self, resource: dict[str, Any]) -> None:
        self.out.append((resource["resourceType"], resource))

    def subject(self) -> dict[str, str]:
        return {"reference": f"Patient/{self.pid}"}

    # -------------------------------------------------------------- patient
    def patient(self) -> None:
        rng = self.rng
        res: dict[str, Any] = {"resourceType": "Patient", "id": self.pid,
                               "meta": {"profile": ["http://hl7.org/fhir/us/core/"
                                                    "StructureDefinition/us-core-patient"]},
                               "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1",
                                               "value": f"MRN{rng.randrange(10**8):08d}"}],
                               "active": True}
        if rng.random() < 0.97:
            age_days = rng.randrange(18 * 365, 92 * 365)
            res["birthDate"] = (self.as_of.date() - timedelta(days=age_days)).isoformat()
        res["gender"] = rng.choices(("female", "male", "other", "unknown"),
                                    (0.5, 0.47, 0.02, 0.01))[0]
        res["name"] = [{"family": f"Test{rng.randrange(1000):03d}", "given": ["Synthetic"]}]
        self.add(res)

    # ----------------------------------------------------------------- labs
    def labs(self) -> None:
        rng = self.rng
        for analyte in _LAB_ORDER:
            if rng.random() >= _LAB_RATE[analyte]:
                continue
            lookback = _LOOKBACK.get(analyte, 30)
            for _ in range(rng.choices((1, 2, 3), (0.7, 0.22, 0.08))[0]):
                self.lab(analyte, lookback)

    def lab(self, analyte: str, lookback: int) -> None:
        rng = self.rng
        forms, values = _LABS[analyte]
        code, unit, factor, ucum = rng.choice(forms)
        if rng.random() < 0.45:
            canonical = rng.choice(values)  # near a threshold
        else:
            low, high, decimals = _NORMAL[analyte]
            canonical = round(rng.uniform(low, high), decimals)
        age = rng.random()
        days: float
        if age < 0.1:
            days = lookback + rng.randrange(1, 400)  # stale: outside the lookback
        elif age < 0.12:
            days = -rng.randrange(1, 30)  # future-dated
        else:
            days = rng.uniform(0, lookback * 0.95)
        status = rng.choices(("final", "amended", "corrected", "preliminary",
                              "entered-in-error", "registered"),
                             (0.9, 0.02, 0.02, 0.03, 0.02, 0.01))[0]
        value = round(canonical * factor, 4 if factor == 1.0 else 3)
        quantity: dict[str, Any] = {"value": int(value) if value == int(value) and
                                    rng.random() < 0.3 else value, "unit": unit}
        if ucum:
            quantity.update(system=UCUM, code=unit)
        if rng.random() < 0.015:
            quantity["comparator"] = "<"
        when = self.when(days)
        res: dict[str, Any] = {
            "resourceType": "Observation", "id": self.next_id("lab"), "status": status,
            "category": [{"coding": [{"system": _CATEGORY, "code": "laboratory"}]}],
            "code": {"coding": [{"system": LOINC, "code": code}], "text": analyte},
            "subject": self.subject(), "effectiveDateTime": when, "valueQuantity": quantity,
        }
        if "T" in when and rng.random() < 0.5:
            res["issued"] = when
        self.add(res)

    # ------------------------------------------------------------- findings
    def findings(self) -> None:
        rng = self.rng
        symptomatic = rng.random() < 0.6
        for code, rate in _FINDINGS:
            if not symptomatic or rng.random() >= rate:
                continue
            self.finding(code, present=rng.random() < 0.9)
        if rng.random() < 0.02:  # red flags, rare
            for code in rng.sample(_RED_FLAGS, rng.choice((1, 1, 2))):
                self.finding(code, present=True)
        if rng.random() < 0.03:  # a recorded absence
            self.finding(rng.choice(_RED_FLAGS), present=False)

    def finding(self, code: str, *, present: bool) -> None:
        rng = self.rng
        days = rng.uniform(0, 500) if rng.random() < 0.15 else rng.uniform(0, 300)
        res: dict[str, Any] = {
            "resourceType": "Observation", "id": self.next_id("obs"),
            "status": rng.choices(("final", "preliminary", "entered-in-error"),
                                  (0.95, 0.03, 0.02))[0],
            "category": [{"coding": [{"system": _CATEGORY, "code": "exam"}]}],
            "code": {"coding": [{"system": LOCAL, "code": code}]},
            "subject": self.subject(), "effectiveDateTime": self.when(days),
        }
        form = rng.random()
        if form < 0.6:
            res["valueBoolean"] = present
        elif form < 0.85:
            res["valueCodeableConcept"] = {"coding": [{"system": SNOMED, "code": (
                "373066001" if present else "373067005")}]}
        elif not present:
            res["valueBoolean"] = False
        if code == "leg-cramps":
            if rng.random() < 0.7:
                site = rng.choices(("calf", "thigh", "foot"), (0.8, 0.12, 0.08))[0]
                res["bodySite"] = {"coding": [{"system": LOCAL, "code": site}]}
            if rng.random() < 0.6:
                res["component"] = [{"code": {"coding": [{"system": LOCAL,
                                                          "code": "nocturnal"}]},
                                     "valueBoolean": rng.random() < 0.7}]
        elif code == "heel-pain" and rng.random() < 0.5:
            res["bodySite"] = {"coding": [{"system": LOCAL, "code": "heel"}]}
        self.add(res)

    # ----------------------------------------------------------- conditions
    def conditions(self) -> None:
        rng = self.rng
        for snomed, icd, display, rate in _CONDITIONS:
            if rng.random() >= rate:
                continue
            system, code = (SNOMED, snomed) if rng.random() < 0.5 else (ICD10CM, icd)
            res: dict[str, Any] = {
                "resourceType": "Condition", "id": self.next_id("cond"),
                "code": {"coding": [{"system": system, "code": code, "display": display}]},
                "subject": self.subject(),
                "recordedDate": self.when(rng.uniform(0, 2000), time=True),
            }
            clinical = rng.choices(("active", "resolved", "inactive", None),
                                   (0.8, 0.1, 0.05, 0.05))[0]
            if clinical:
                res["clinicalStatus"] = {"coding": [{"system": _COND_CLINICAL,
                                                     "code": clinical}]}
            verification = rng.choices(("confirmed", "provisional", "entered-in-error",
                                        "refuted"), (0.9, 0.05, 0.03, 0.02))[0]
            res["verificationStatus"] = {"coding": [{"system": _COND_VERIFICATION,
                                                     "code": verification}]}
            if rng.random() < 0.5:
                res["onsetDateTime"] = self.when(rng.uniform(0, 3000), time=False)
            self.add(res)

    # ---------------------------------------------------------- medications
    def medications(self) -> None:
        rng = self.rng
        for choices, rate in _MEDICATIONS:
            if rng.random() >= rate:
                continue
            code, display = rng.choice(choices)
            self.add({
                "resourceType": "MedicationRequest", "id": self.next_id("med"),
                "status": rng.choices(("active", "stopped", "completed", "entered-in-error"),
                                      (0.85, 0.08, 0.05, 0.02))[0],
                "intent": "order",
                "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code,
                                                          "display": display}],
                                              "text": display},
                "subject": self.subject(),
                "authoredOn": self.when(rng.uniform(0, 700), time=False),
            })

    # ------------------------------------------------------------ allergies
    def allergies(self) -> None:
        rng = self.rng
        roll = rng.random()
        if roll < 0.06:
            code, display = rng.choice(_NUT_ALLERGY)
        elif roll < 0.12:
            code, display = rng.choice(_OTHER_ALLERGY)
        else:
            return
        cc = {"coding": [{"system": SNOMED, "code": code, "display": display}]}
        res: dict[str, Any] = {
            "resourceType": "AllergyIntolerance", "id": self.next_id("alg"),
            "clinicalStatus": {"coding": [{"system": _ALLERGY_CLINICAL, "code": rng.choices(
                ("active", "inactive"), (0.92, 0.08))[0]}]},
            "patient": self.subject(),
        }
        if rng.random() < 0.8:
            res["code"] = cc
        else:
            res["reaction"] = [{"substance": cc, "manifestation": [{"text": "hives"}]}]
        self.add(res)

    # ----------------------------------------------------------- encounters
    def encounters(self) -> None:
        rng = self.rng
        for _ in range(rng.choices((0, 1, 2, 3), (0.2, 0.4, 0.3, 0.1))[0]):
            start = self.when(rng.uniform(0, 700), time=True)
            self.add({
                "resourceType": "Encounter", "id": self.next_id("enc"), "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                          "code": "AMB"},
                "subject": self.subject(), "period": {"start": start, "end": start},
            })

    def build(self) -> list[tuple[str, dict[str, Any]]]:
        self.patient()
        self.labs()
        self.findings()
        self.conditions()
        self.medications()
        self.allergies()
        self.encounters()
        return self.out


def _as_of(value: datetime | date | str | None) -> datetime:
    if value is None:
        return datetime(2026, 3, 1, tzinfo=timezone.utc)
    if isinstance(value, str):
        try:
            value = date.fromisoformat(value[:10])
        except ValueError:
            raise InvalidArgument(f"as_of {value!r} is not an ISO date") from None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return datetime.combine(value, datetime.min.time(), tzinfo=timezone.utc)


def _blocks(patients: int, seed: int, as_of: datetime
            ) -> Iterator[list[tuple[str, bytes]]]:
    for start in range(0, patients, _BLOCK):
        lines: list[tuple[str, bytes]] = []
        for index in range(start, min(start + _BLOCK, patients)):
            lines += [(rtype, orjson.dumps(res))
                      for rtype, res in _Patient(seed, index, as_of).build()]
        random.Random(f"cdss-cohort:{seed}:block:{start}").shuffle(lines)
        yield lines


def generate_cohort(
    patients: int,
    *,
    seed: int = 0,
    out: str | Path,
    as_of: datetime | date | str | None = None,
    observation_files: int = 2,
    gzip_files: bool = False,
) -> GeneratedCohort:
    """Write a synthetic bulk export of ``patients`` patients into ``out``.

    ``as_of`` (default 2026-03-01) is the date the data is relative to: screen
    it with the same ``as_of``. Observations are spread over
    ``observation_files`` files (at least 2), chosen line by line, so one
    patient's results are in several files. ``gzip_files`` writes
    ``.ndjson.gz`` files (deterministic: no time stamp in the header).
    Returns what was written; the manifest is ``out/manifest.json``.
    """
    if isinstance(patients, bool) or not isinstance(patients, int) or patients < 0:
        raise InvalidArgument(f"patients must be a whole number >= 0, got {patients!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidArgument(f"seed must be an integer, got {seed!r}")
    if observation_files < 2:
        raise InvalidArgument("observation_files must be at least 2")
    when = _as_of(as_of)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".ndjson.gz" if gzip_files else ".ndjson"
    names: dict[str, list[str]] = {
        rtype: ([f"{rtype}.{i + 1}{suffix}" for i in range(observation_files)]
                if rtype == "Observation" else [f"{rtype}{suffix}"])
        for rtype in TYPES
    }
    handles: dict[str, IO[bytes]] = {}
    counts: dict[str, int] = dict.fromkeys(TYPES, 0)
    per_file: dict[str, int] = {}
    pick = random.Random(f"cdss-cohort:{seed}:files")
    try:
        for files in names.values():
            for name in files:
                path = folder / name
                handles[name] = (
                    gzip.GzipFile(path, "wb", mtime=0, compresslevel=5)  # type: ignore[assignment]
                    if gzip_files else path.open("wb"))
                per_file[name] = 0
        for block in _blocks(patients, seed, when):
            for rtype, line in block:
                files = names[rtype]
                name = files[pick.randrange(len(files))] if len(files) > 1 else files[0]
                handles[name].write(line + b"\n")
                per_file[name] += 1
                counts[rtype] += 1
    finally:
        for handle in handles.values():
            handle.close()
    manifest = {
        "transactionTime": when.isoformat().replace("+00:00", "Z"),
        "request": f"cdss generate --patients {patients} --seed {seed}",
        "requiresAccessToken": False,
        "output": [{"type": rtype, "url": name, "count": per_file[name]}
                   for rtype in TYPES for name in names[rtype]],
        "error": [],
    }
    manifest_path = folder / "manifest.json"
    manifest_path.write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
    written = tuple(folder / name for rtype in TYPES for name in names[rtype])
    return GeneratedCohort(out=folder, manifest=manifest_path, files=written, counts=counts)
