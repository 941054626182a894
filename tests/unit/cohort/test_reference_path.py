"""The fast path gives what the reference path gives, byte for byte.

Intake keeps the resources that can become no fact out of the record (their
codes are tallied for the notes instead) and lean intake validates the parsed
record resource by resource; ``CDSS_REFERENCE_PATH=1`` switches both back to
reading every resource. Every result file of a screen, and every Assessment
or error of ``evaluate``, must be the same bytes either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

import cdss
from cdss.cohort import _screen as screen_module
from cdss.errors import CDSSError
from cdss.facts import UnmappedCodes, contributes
from cdss.intake import REFERENCE_PATH, read_record
from tests.support.cohort import AS_OF, RULESET, screen_cohort, shared_cohort, write_ndjson

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


def _obs(rid: Any, patient: str, code: str, *, display: str | None = None,
         when: str = "2026-02-20T09:00:00Z", value: Any = 4.1, unit: str = "mmol/L",
         **extra: Any) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": LOINC, "code": code}
    if display is not None:
        coding["display"] = display
    res: dict[str, Any] = {"resourceType": "Observation", "id": rid, "status": "final",
                           "code": {"coding": [coding]}, "subject": {"reference": patient},
                           "effectiveDateTime": when,
                           "valueQuantity": {"value": value, "unit": unit,
                                             "system": "http://unitsofmeasure.org",
                                             "code": unit}}
    res.update(extra)
    return res


def _patient_records(n: int) -> list[dict[str, Any]]:
    """Patients whose records hold what the unmapped notes read: codes with
    and without displays (blank, padded, differing), resources with no code,
    several codings, ids that are numbers, invalid resources no rule reads, a
    resource of no patient reference, unmapped medications and allergies,
    draft orders, times without a zone, and labs a rule does read."""
    out: list[dict[str, Any]] = []
    for i in range(n):
        ref = f"Patient/p{i}"
        out.append({"resourceType": "Patient", "id": f"p{i}", "gender": "female",
                    "birthDate": "1950-05-0" + str(1 + i % 9)})
        out.append(_obs(f"k{i}", ref, "2823-3", value=3.1 + i / 10))  # potassium: a fact
        out.append(_obs(f"m{i}", ref, "19123-9", value=1.2, unit="mg/dL",
                        effectiveDateTime="2026-02-10T08:00:00"))  # magnesium, no zone
        out.append(_obs(f"h{i}", ref, "8302-2", display="Body Height", value=160))
        out.append(_obs(f"h2{i}", ref, "8302-2", display="  Body height ", value=161))
        out.append(_obs(f"w{i}", ref, "29463-7", display="", value=70))
        out.append(_obs(f"bp{i}", ref, "85354-9", display="Blood pressure"))
        out[-1]["code"]["coding"].append({"system": SNOMED, "code": "75367002",
                                          "display": "Blood pressure"})
        out.append({"resourceType": "Observation", "id": f"nc{i}", "status": "final",
                    "code": {"text": "a note"}, "subject": {"reference": ref}})
        out.append(_obs(i + 1000, ref, "8867-4", display="Heart rate", value=70))  # id a number
        out.append(_obs(f"bad{i}", ref, "9279-1", display="Respiratory rate",
                        when="2026-13-45", value="fast"))  # invalid, read by no rule
        if i % 3 == 0:
            out.append({"resourceType": "Condition", "id": f"c{i}",
                        "code": {"coding": [{"system": SNOMED, "code": "44054006",
                                             "display": "Diabetes"}]},
                        "subject": {"reference": ref},
                        "clinicalStatus": {"coding": [{"code": "active"}]}})
            out.append({"resourceType": "MedicationRequest", "id": f"mr{i}", "status": "active",
                        "medicationCodeableConcept": {"coding": [
                            {"system": RXNORM, "code": "314076", "display": "lisinopril 10 MG"}]},
                        "subject": {"reference": ref}})
            out.append({"resourceType": "MedicationRequest", "id": f"d{i}", "status": "draft",
                        "medicationCodeableConcept": {"coding": [
                            {"system": RXNORM, "code": "1000001"}]},
                        "subject": {"reference": ref}})
            out.append({"resourceType": "AllergyIntolerance", "id": f"a{i}",
                        "code": {"coding": [{"system": SNOMED, "code": "300916003",
                                             "display": "Latex allergy"}]},
                        "reaction": [{"substance": {"coding": [
                            {"system": SNOMED, "code": "111088007", "display": "Latex"}]}}],
                        "patient": {"reference": ref}})
            out.append({"resourceType": "Encounter", "id": f"e{i}",
                        "subject": {"reference": ref}})
        if i == 1:  # another spelling of the patient's reference, on unmapped resources only
            out.append(_obs(f"url{i}", f"https://ehr.example.org/fhir/{ref}", "8310-5",
                            display="Body temperature"))
        if i == 2:  # no Patient, unmapped resources under two spellings: a patient error
            out.append(_obs("o1", "Patient/nopatient", "8310-5"))
            out.append(_obs("o2", "https://ehr.example.org/fhir/Patient/nopatient", "8310-5"))
            out.append(_obs("o3", "Patient/alone", "8310-5"))  # no Patient, one spelling
    return out


def _screen_files(out: Path) -> dict[str, bytes]:
    """Every result file of a screen but run.json (what measures the run)."""
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*")
             if p.is_file() and ".cdss-screen" not in p.parts and p.name != "run.json"}
    assert {"assessments.ndjson", "assessments.parquet", "errors.ndjson", "summary.json",
            "worklist.csv", "report.html"} <= set(files)
    return files


@pytest.mark.parametrize(("mode", "workers"), [("lean", 0), ("strict", 0), ("lean", 2)])
def test_screen_files_match_the_reference_path(tmp_path: Path, mode: str, workers: int,
                                               monkeypatch: pytest.MonkeyPatch,
                                               tmp_path_factory: pytest.TempPathFactory) -> None:
    cohort = shared_cohort(tmp_path_factory)
    extra = write_ndjson(tmp_path / "extra" / "resources.ndjson",
                         [orjson.dumps(r) for r in _patient_records(12)])
    inputs = [*cohort.files, extra]
    monkeypatch.delenv(REFERENCE_PATH, raising=False)
    # small chunks: files split across processes, and put together again
    monkeypatch.setattr(screen_module, "_chunk_bytes", lambda total, processes: 20_000)
    summary = screen_cohort(inputs, tmp_path / "fast", mode=mode, partitions=3,
                            workers=workers)
    run = orjson.loads((tmp_path / "fast" / "run.json").read_bytes())["timings"]
    assert run["spill_chunks"] > len(inputs) and run["resources_reduced"] > 0
    assert summary.patient_errors >= 1  # the patient of two spellings and no Patient
    monkeypatch.setenv(REFERENCE_PATH, "1")
    reference_summary = screen_cohort(inputs, tmp_path / "reference", mode=mode, partitions=3,
                                      workers=workers)
    run = orjson.loads((tmp_path / "reference" / "run.json").read_bytes())["timings"]
    assert run["resources_reduced"] == 0 and reference_summary.balanced
    fast, reference = _screen_files(tmp_path / "fast"), _screen_files(tmp_path / "reference")
    assert sorted(fast) == sorted(reference)
    for name in sorted(reference):
        assert fast[name] == reference[name], name
    notes = b"unmapped-code"
    assert notes in fast["assessments.ndjson"]  # the tally was exercised


def _answer(record: Any, **kwargs: Any) -> bytes:
    try:
        return cdss.evaluate(record, ruleset=RULESET, as_of=AS_OF, engine="reference",
                             **kwargs).to_json()
    except CDSSError as exc:
        return f"{type(exc).__name__}: {exc}".encode()


def _records() -> list[Any]:
    resources = _patient_records(3)
    one = [r for r in resources if (r.get("subject") or r.get("patient") or {}).get(
        "reference", "Patient/p0") == "Patient/p0" and r.get("id") != "p1" and r.get("id") != "p2"]
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"resource": r} for r in one]}
    orphan = dict(one[4])
    orphan.pop("subject")  # unmapped, no patient reference: left out or refused
    other = dict(one[5], subject={"reference": "Patient/else"})  # another patient's
    valid = [r for r in one if not str(r.get("id")).startswith("bad")]
    return [bundle, orjson.dumps(bundle), one, valid, orjson.dumps(valid), [*one, orphan],
            [*valid, other], valid[1:]]


@pytest.mark.parametrize("mode", ["lean", "strict"])
@pytest.mark.parametrize("on_invalid", ["leave-out", "refuse"])
def test_evaluate_matches_the_reference_path(mode: str, on_invalid: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    for i, record in enumerate(_records()):
        for selections in (None, ["MedicationRequest/d0"]):
            kwargs = {"mode": mode, "on_invalid": on_invalid, "selections": selections}
            monkeypatch.delenv(REFERENCE_PATH, raising=False)
            fast = _answer(record, **kwargs)
            monkeypatch.setenv(REFERENCE_PATH, "1")
            assert fast == _answer(record, **kwargs), (i, selections)


def test_unmapped_resources_stay_out_of_the_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path is the one taken: resources no rule reads are tallied, not kept."""
    rs = cdss.load_ruleset(RULESET)
    records = [r for r in _patient_records(1) if r["resourceType"] != "Encounter"]

    def read() -> tuple[int, UnmappedCodes]:
        tally = UnmappedCodes()
        record = read_record(records, mode="lean", on_invalid="leave-out",
                             relevant=lambda r: contributes(r, rs.terminology),
                             unmapped=tally.add)
        return len(record.resources), tally

    monkeypatch.delenv(REFERENCE_PATH, raising=False)
    kept, tally = read()
    can_read = [r["id"] for r in records
                if r["resourceType"] != "Patient" and contributes(r, rs.terminology)]
    assert "k0" in can_read and "h0" not in can_read
    assert kept == len(can_read)
    assert tally.refs[(LOINC, "8302-2")] == {"Observation/h0", "Observation/h20"}
    assert tally.displays[(LOINC, "8302-2")] == {"Body Height", "Body height"}
    assert tally.refs[("", "")] == {"Observation/nc0"}
    assert tally.draft_orders == {"MedicationRequest/d0"}
    monkeypatch.setenv(REFERENCE_PATH, "1")
    kept, tally = read()
    assert kept == len(records) - 1 and not tally.refs
