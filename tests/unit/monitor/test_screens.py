"""``monitor_screens`` on real screens of the generated cohort: the same
population screened again after its lab feed changed a potassium LOINC code
to one no value set knows; and on edited summaries, each alarm firing and
not firing."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from cdss.cohort import GeneratedCohort
from cdss.errors import CohortError
from cdss.monitor import monitor_screens
from tests.support.cohort import screen_cohort

#: The potassium codes the ruleset's value set maps (a lab feed that moves to a
#: code outside them leaves the potassium rules without data).
POTASSIUM = ("2823-3", "6298-4", "77142-8", "32713-0", "39789-3", "39790-1")
NEW_CODE = "99999-9"


@pytest.fixture(scope="module")
def screens(cohort: GeneratedCohort, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder ``screens`` with ``2026-01`` (the cohort as generated), ``2026-02``
    (the same again) and ``2026-03`` (the potassium code changed)."""
    root = tmp_path_factory.mktemp("screens")
    changed = tmp_path_factory.mktemp("changed-feed")
    for path in Path(cohort.out).iterdir():
        if path.is_file():
            data = path.read_bytes()
            for code in POTASSIUM:
                for sep in (b":", b": "):
                    data = data.replace(b'"code"' + sep + f'"{code}"'.encode(),
                                        b'"code"' + sep + f'"{NEW_CODE}"'.encode())
            (changed / path.name).write_bytes(data)
    assert any(NEW_CODE.encode() in p.read_bytes() for p in changed.iterdir()), \
        "the generated cohort has no potassium result to change"
    screen_cohort([cohort.out], root / "2026-01", workers=0, partitions=2)
    screen_cohort([cohort.out], root / "2026-02", workers=0, partitions=2)
    screen_cohort([changed], root / "2026-03", workers=0, partitions=2)
    return root


def test_the_same_population_twice_raises_no_alarm(screens: Path) -> None:
    report = monitor_screens([screens / "2026-01", screens / "2026-02"])
    assert report["alarms"] == []
    assert [s["label"] for s in report["screens"]] == ["2026-01", "2026-02"]
    flags = [i for i in report["items"] if i["item"].startswith("flag:")]
    assert flags
    for item in flags:
        first = item["series"][0]
        assert first["interval"][0] <= first["prevalence"] <= first["interval"][1]
        assert item["subgroups"], "flags have age band and sex rates"


def test_a_changed_lab_code_raises_an_alarm_naming_the_item_screen_and_cause(
        screens: Path) -> None:
    report = monitor_screens([screens])  # a folder of screens, taken in name order
    assert [s["label"] for s in report["screens"]] == ["2026-01", "2026-02", "2026-03"]
    unmapped = [a for a in report["alarms"] if a["kind"] == "unmapped"]
    assert [(a["code"], a["period"]) for a in unmapped] == \
        [(f"http://loinc.org|{NEW_CODE}", "2026-03")]
    fallen = [a for a in report["alarms"] if a["kind"] in ("silent", "drop")
              and a["group"] is None]
    assert fallen, report["alarms"]
    assert all(a["period"] == "2026-03" for a in fallen)
    assert any("hypokal" in a["item"] for a in fallen), [a["item"] for a in fallen]
    assert all(any(NEW_CODE in c for c in a["likely_cause"]) for a in fallen)


def _edited(folder: Path, out: Path, edit: Any) -> Path:
    shutil.copytree(folder, out)
    data = orjson.loads((out / "summary.json").read_bytes())
    edit(data)
    (out / "summary.json").write_bytes(orjson.dumps(data))
    return out


def test_a_subgroup_that_loses_a_flag_is_named(screens: Path, tmp_path: Path) -> None:
    base = orjson.loads((screens / "2026-01" / "summary.json").read_bytes())
    demo = base["demographics"]
    code, bands = max(demo["flags_by_sex"].items(), key=lambda kv: max(kv[1].values()))
    sex = max(bands, key=bands.get)

    def drop_group(data: dict[str, Any]) -> None:
        lost = data["demographics"]["flags_by_sex"][code][sex]
        data["demographics"]["flags_by_sex"][code][sex] = 0
        data["flags"][code]["patients"] -= lost

    edited = _edited(screens / "2026-01", tmp_path / "2026-02", drop_group)
    report = monitor_screens([screens / "2026-01", edited])
    grouped = [a for a in report["alarms"] if a.get("group") == f"sex {sex}"]
    assert [a["item"] for a in grouped] == [f"flag:{code}"]
    assert all(a.get("group") in (None, f"sex {sex}") for a in report["alarms"])


def test_a_ruleset_change_between_screens_is_an_alarm(screens: Path, tmp_path: Path) -> None:
    def bump(data: dict[str, Any]) -> None:
        data["ruleset"] = {**copy.deepcopy(data["ruleset"]), "version": "9.9.9"}

    edited = _edited(screens / "2026-01", tmp_path / "2026-02", bump)
    report = monitor_screens([screens / "2026-01", edited])
    assert [a["kind"] for a in report["alarms"]] == ["version"]


def test_too_few_or_unreadable_screens_are_clear_errors(screens: Path, tmp_path: Path) -> None:
    with pytest.raises(CohortError, match="at least two"):
        monitor_screens([screens / "2026-01"])
    with pytest.raises(CohortError, match="no screen output"):
        monitor_screens([tmp_path / "absent", screens / "2026-01"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "summary.json").write_text("{", encoding="utf-8")
    with pytest.raises(CohortError, match="not a screen's summary"):
        monitor_screens([bad, screens / "2026-01"])
