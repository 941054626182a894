"""Successive cohort screens of one population compared
(``cdss monitor --screens``): each flag's, referral's, plan item's and data
request's prevalence per screen with its Wilson interval, the same per age
band and sex for flags, and the alarms between each screen and the one
before: an item gone silent (expected often enough that none is
implausible), a prevalence that dropped or surged beyond chance, a group
whose prevalence moved, a new or growing unmapped code, a ruleset change.
Only the screens' ``summary.json`` (and ``run.json``) are read."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from cdss.errors import CohortError
from cdss.monitor._service import ALARM_KINDS, MonitorSettings
from cdss.monitor._stats import compare_rates, wilson

__all__ = ["monitor_screens", "screen_folders"]

_ITEMS = (("flags", "flag"), ("referrals", "referral"), ("plan", "plan"),
          ("data_requests", "data-request"))


def screen_folders(paths: Sequence[Path]) -> list[Path]:
    """The screen outputs ``paths`` name: each a screen's folder (it holds
    ``summary.json``) or a folder of such folders (taken in name order)."""
    out: list[Path] = []
    for path in paths:
        if (path / "summary.json").is_file():
            out.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.iterdir() if (p / "summary.json").is_file())
            if not found:
                raise CohortError(f"{path} holds no screen output (no summary.json in it "
                                  "or its folders)")
            out.extend(found)
        else:
            raise CohortError(f"no screen output at {path}")
    return out


def _read(folder: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = orjson.loads((folder / "summary.json").read_bytes())
        run = folder / "run.json"
        if run.is_file():
            data = {**data, **orjson.loads(run.read_bytes())}
        int(data["counts"]["assessments"])  # the field every summary has
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise CohortError(f"{folder / 'summary.json'} is not a screen's summary: "
                          f"{type(exc).__name__}: {exc}") from None
    return data


def _items(data: dict[str, Any]) -> Counter[str]:
    out: Counter[str] = Counter()
    for section, kind in _ITEMS:
        for code, value in (data.get(section) or {}).items():
            out[f"{kind}:{code}"] = value["patients"] if isinstance(value, dict) else int(value)
    return out


def _point(label: str, x: int, n: int) -> dict[str, Any]:
    lo, hi = wilson(x, n)
    return {"label": label, "patients": x, "assessed": n,
            "prevalence": round(x / n, 6) if n else None,
            "interval": [round(lo, 6), round(hi, 6)]}


def _compare(alarms: list[dict[str, Any]], *, item: str, group: str | None, label: str,
             before: tuple[int, int], now: tuple[int, int], settings: MonitorSettings) -> bool:
    """Add the alarm the change from ``before`` to ``now`` (patients,
    assessed) calls for, if any; whether one was added."""
    (x1, n1), (x2, n2) = before, now
    if not n1 or not n2 or (not x1 and not x2):
        return False
    p1 = x1 / n1
    where = f" ({group})" if group else ""
    if x2 == 0 and p1 * n2 >= settings.silent_expected:
        alarms.append({"kind": "silent", "item": item, "group": group, "period": label,
                       "expected": round(p1 * n2, 2), "observed": 0,
                       "message": f"{item}{where} is gone in screen {label}: "
                                  f"{p1 * n2:.1f} patients expected, none found"})
        return True
    pvalue = compare_rates(x1, n1, x2, n2)
    if pvalue >= settings.significance:
        return False
    p2 = x2 / n2
    kind = "drop" if p2 < p1 else "surge"
    alarms.append({"kind": kind, "item": item, "group": group, "period": label,
                   "before": round(p1, 6), "after": round(p2, 6),
                   "change": round(p2 / p1, 3) if p1 else None,
                   "p_value": float(f"{pvalue:.3g}"),
                   "message": f"{item}{where} {'fell' if kind == 'drop' else 'rose'} from "
                              f"{p1:.2%} to {p2:.2%} in screen {label}"})
    return True


def monitor_screens(paths: Sequence[str | Path], *,
                    settings: MonitorSettings | None = None) -> dict[str, Any]:
    """The monitoring report of successive screens (folders, in order, or a
    folder of them): see the module's doc. :class:`~cdss.errors.CohortError`
    when fewer than two screens are found or one cannot be read."""
    settings = settings or MonitorSettings()
    folders = screen_folders([Path(p) for p in paths])
    if len(folders) < 2:
        raise CohortError(f"comparing screens needs at least two; found {len(folders)}")
    screens = [_read(f) for f in folders]
    labels = [f.name for f in folders]
    if len(set(labels)) != len(labels):
        labels = [str(f) for f in folders]
    assessed = [int(s["counts"]["assessments"]) for s in screens]
    items = [_items(s) for s in screens]
    alarms: list[dict[str, Any]] = []
    rows = []
    for item in sorted(set().union(*items)):
        series = [_point(label, its[item], n) for label, its, n in zip(labels, items, assessed,
                                                                       strict=True)]
        for i in range(1, len(screens)):
            series[i]["changed"] = _compare(
                alarms, item=item, group=None, label=labels[i],
                before=(items[i - 1][item], assessed[i - 1]), now=(items[i][item], assessed[i]),
                settings=settings)
        row: dict[str, Any] = {"item": item, "series": series, "subgroups": []}
        if item.startswith("flag:"):
            code = item.split(":", 1)[1]
            for dimension, totals, by in (("age band", "age_bands", "flags_by_age_band"),
                                          ("sex", "sexes", "flags_by_sex")):
                groups = sorted({g for s in screens
                                 for g in ((s.get("demographics") or {}).get(totals) or {})})
                for g in groups:
                    counts = []
                    for s, label in zip(screens, labels, strict=True):
                        demo = s.get("demographics") or {}
                        n = int((demo.get(totals) or {}).get(g, 0))
                        x = int(((demo.get(by) or {}).get(code) or {}).get(g, 0))
                        counts.append((label, x, n))
                    name = f"{dimension} {g}"
                    row["subgroups"].append({"group": name, "series": [
                        _point(label, x, n) for label, x, n in counts]})
                    for i in range(1, len(counts)):
                        _compare(alarms, item=item, group=name, label=counts[i][0],
                                 before=counts[i - 1][1:], now=counts[i][1:], settings=settings)
        rows.append(row)
    codes = sorted(set().union(*[s.get("unmapped_codes") or {} for s in screens]))
    unmapped = []
    for code in codes:
        patients = [int((s.get("unmapped_codes") or {}).get(code, 0)) for s in screens]
        unmapped.append({"code": code, "patients": patients})
        for i in range(1, len(screens)):
            before, now = patients[i - 1], patients[i]
            change = None
            if before == 0 and now >= settings.unmapped_min:
                change = "appeared"
            elif before and now / assessed[i] > 2 * before / assessed[i - 1] and \
                    compare_rates(before, assessed[i - 1], now, assessed[i]) \
                    < settings.significance:
                change = "grew"
            if change:
                alarms.append({"kind": "unmapped", "item": None, "group": None, "code": code,
                               "period": labels[i], "change": change,
                               "message": f"code {code} {change} unmapped in screen "
                                          f"{labels[i]} ({now} patients)"})
    for i in range(1, len(screens)):
        old, new = screens[i - 1].get("ruleset") or {}, screens[i].get("ruleset") or {}
        if old != new:
            alarms.append({"kind": "version", "item": None, "group": None, "period": labels[i],
                           "from": old, "to": new,
                           "message": f"ruleset changed in screen {labels[i]}: "
                                      f"{old.get('id')}@{old.get('version')} to "
                                      f"{new.get('id')}@{new.get('version')}"})
    for alarm in alarms:
        if alarm["kind"] in ("silent", "drop", "surge"):
            causes = [f"terminology drift: code {a['code']} {a['change']} unmapped in the "
                      "same screen" if a["kind"] == "unmapped" else a["message"]
                      for a in alarms if a["kind"] in ("unmapped", "version")
                      and a["period"] == alarm["period"]]
            alarm["likely_cause"] = causes or [
                "none in the screens: check the data's codes and the rule's inputs"]
    alarms.sort(key=lambda a: (ALARM_KINDS.index(a["kind"]), a["period"], a.get("item") or "",
                               a.get("group") or ""))
    return {"source": "screens",
            "screens": [{"label": label, "folder": str(f), "as_of": s.get("as_of", ""),
                         "ruleset": "{id}@{version}".format(**(s.get("ruleset") or
                                                               {"id": "?", "version": "?"})),
                         "assessed": n}
                        for label, f, s, n in zip(labels, folders, screens, assessed,
                                                  strict=True)],
            "items": rows, "unmapped_codes": unmapped, "alarms": alarms,
            "alarm_counts": dict(Counter(a["kind"] for a in alarms))}
