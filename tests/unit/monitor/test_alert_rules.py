"""The shipped Prometheus alert rules: a valid rules file, every metric they
name exported by the service's /metrics with the labels they group by, and
promtool accepts them and the silent-rule alert fires on a recorded series
(and not before)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cdss.service._metrics import Metrics

RULES = Path(__file__).resolve().parents[3] / "deploy" / "prometheus" / "cdss-rules.yml"
METRIC = re.compile(r"\b(cdss_[a-z_]+)\b")
BY = re.compile(r"by \(([^)]*)\)")


def _rules() -> list[dict[str, object]]:
    data = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    assert set(data) == {"groups"}
    out = []
    for group in data["groups"]:
        assert set(group) == {"name", "rules"} and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
            assert re.fullmatch(r"Cdss[A-Za-z]+", rule["alert"])
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert rule["annotations"]["summary"]
            out.append(rule)
    return out


def test_every_metric_an_alert_names_is_exported_with_its_labels() -> None:
    metrics = Metrics()
    exported = {}
    for family in metrics.registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        exported[name] = family
    labels = {"cdss_calls_total": {"service", "hook", "status"},
              "cdss_cards_issued_total": {"service", "rule"},
              "cdss_feedback_total": {"service", "rule", "outcome"},
              "cdss_store_writes_dropped_total": {"kind"},
              "cdss_store_errors_total": {"operation"}, "cdss_ready": set()}
    text = metrics.exposition()[0].decode()
    rules = _rules()
    assert len(rules) == 5
    for rule in rules:
        expr = str(rule["expr"])
        named = set(METRIC.findall(expr))
        assert named, rule["alert"]
        for name in named:
            assert name in exported, f"{rule['alert']}: {name} is not a metric of the service"
            assert f"# TYPE {name}" in text or f"# TYPE {name.removesuffix('_total')}" in text
        for group in BY.findall(expr):
            wanted = {g.strip() for g in group.split(",")}
            assert any(wanted <= labels[n] for n in named), (rule["alert"], wanted)


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not on PATH: install it (Debian: apt-get install "
                    "prometheus; or a Prometheus release's promtool)", pytrace=False)
    return found


def test_promtool_accepts_the_rules() -> None:
    done = subprocess.run([_promtool(), "check", "rules", str(RULES)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 rules found" in done.stdout


SILENT_TEST = """
rule_files: [{rules}]
evaluation_interval: 1h
tests:
  - interval: 1h
    input_series:
      # 10 cards an hour for 8 days, then none: silent from day 8
      - series: 'cdss_cards_issued_total{{service="svc", rule="R-MID"}}'
        values: '0+10x192 1920+0x40'
      # steady all along: never silent
      - series: 'cdss_cards_issued_total{{service="svc", rule="R-COMMON"}}'
        values: '0+40x232'
      - series: 'cdss_ready'
        values: '1x232'
    alert_rule_test:
      - eval_time: 200h
        alertname: CdssRuleSilent
      - eval_time: 220h
        alertname: CdssRuleSilent
        exp_alerts:
          - exp_labels: {{service: svc, rule: R-MID, severity: critical}}
            exp_annotations:
              summary: "Rule R-MID of svc has issued no card for 24 hours"
              description: "{description}"
"""


def test_the_silent_rule_alert_fires_on_a_recorded_series(tmp_path: Path) -> None:
    spec = tmp_path / "silent.test.yml"
    silent = next(r for r in _rules() if r["alert"] == "CdssRuleSilent")
    description = silent["annotations"]["description"]  # type: ignore[index]
    spec.write_text(SILENT_TEST.format(rules=RULES, description=description), encoding="utf-8")
    done = subprocess.run([_promtool(), "test", "rules", str(spec)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr
