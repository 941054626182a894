"""A version diff for a clinician: per rule, what its patients gain and lose.

:func:`rule_summary` turns a diff's per-rule tallies into one entry per rule
whose results change; :func:`render_html` writes the whole report as one
self-contained HTML page (inline style, no scripts, no external assets, every
text escaped): the totals, then per rule its title, the patients gaining,
losing or seeing changed each flag, referral, plan item, suppression or data
request, and a few example patients (references, or numbers only).
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cdss.cohort._screen import DiffReport

__all__ = ["ITEM_LABELS", "render_html", "rule_summary"]

#: How the report names each kind of item.
ITEM_LABELS = {"flag": "flag", "referral": "referral", "plan": "plan item",
               "suppressed": "suppression", "data_request": "data request"}
_CHANGES = ("gained", "lost", "changed")
_ARROW = " \u2192 "


def rule_summary(tallies: Mapping[str, Mapping[str, int]],
                 titles: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """``{rule: {"title", "gained", "lost", "changed", "items"}}`` for every
    rule whose results change, by rule id: the counts are patients with an
    item of the rule gained, lost or changed; ``items`` lists ``{"change",
    "item", "code", "patients"}``."""
    out: dict[str, dict[str, Any]] = {}
    rules = sorted({rule for how in _CHANGES for rule in tallies.get(f"rules_{how}", {})})
    for rule in rules:
        out[rule] = {"title": titles.get(rule),
                     **{how: tallies.get(f"rules_{how}", {}).get(rule, 0) for how in _CHANGES},
                     "items": []}
    for key, patients in sorted(tallies.get("rule_items", {}).items()):
        rule, change, item, code = key.split(" ", 3)
        if rule in out:
            out[rule]["items"].append({"change": change, "item": item, "code": code,
                                       "patients": patients})
    for entry in out.values():
        entry["items"].sort(key=lambda i: (_CHANGES.index(i["change"]), i["item"], i["code"]))
    return out


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:60em;color:#222;line-height:1.4}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:left;vertical-align:top}td.n{text-align:right}
.gained{color:#075e07}.lost{color:#9a1010}.changed{color:#7a5500}.muted{color:#666}
code{font-size:.95em}td a code{white-space:nowrap}
"""


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _ruleset(identity: Mapping[str, str]) -> str:
    return f"{identity.get('id')}@{identity.get('version')}"


def _examples(report: DiffReport, rule: str, limit: int) -> list[tuple[int, dict[str, Any],
                                                                        list[dict[str, str]]]]:
    """Up to ``limit`` patients the rule's changes reach: (number in the
    report, the change, its rule changes of this rule)."""
    found = []
    for number, change in enumerate(report.changes, start=1):
        mine = [r for r in change.get("rules", ()) if r["rule"] == rule]
        if mine:
            found.append((number, change, mine))
            if len(found) >= limit:
                break
    return found


def _rule_section(report: DiffReport, rule: str, entry: Mapping[str, Any], *,
                  identifiers: bool, examples: int) -> list[str]:
    title = entry.get("title")
    parts = [f'<section class="rule" id="rule-{_e(rule)}">',
             f"<h2><code>{_e(rule)}</code> {_e(title) if title else ''}</h2>"]
    if not title:
        parts.append('<p class="muted">(no title: the rule is in neither ruleset file)</p>')
    counts = ", ".join(f'<span class="{how}">{entry[how]:,} {how}</span>' for how in _CHANGES
                       if entry[how])
    parts.append(f"<p>Patients with an item of this rule: {counts}.</p>")
    parts.append("<table><thead><tr><th>change</th><th>what</th><th>code</th>"
                 "<th>shown as</th><th>patients</th></tr></thead><tbody>")
    for item in entry["items"]:
        label = report.item_labels.get(f"{rule} {item['item']} {item['code']}", "")
        parts.append(f'<tr><td class="{_e(item["change"])}">{_e(item["change"])}</td>'
                     f"<td>{_e(ITEM_LABELS.get(item['item'], item['item']))}</td>"
                     f"<td><code>{_e(item['code'])}</code></td><td>{_e(label)}</td>"
                     f'<td class="n">{item["patients"]:,}</td></tr>')
    parts.append("</tbody></table>")
    shown = _examples(report, rule, examples)
    if shown:
        parts.append("<h3>Example patients</h3><ul>")
        for number, change, mine in shown:
            who = (f"<code>{_e(change['patient'])}</code>" if identifiers
                   else f"patient {number} of the report")
            what = "; ".join(f"{_e(r['change'])} {_e(ITEM_LABELS.get(r['item'], r['item']))} "
                             f"<code>{_e(r['code'])}</code>" for r in mine)
            parts.append(f"<li>{who}: {what}</li>")
        parts.append("</ul>")
    parts.append("</section>")
    return parts


def render_html(report: DiffReport, *, identifiers: bool = True, examples: int = 3) -> str:
    """The diff as one self-contained HTML page (see the module's docstring);
    ``identifiers=False`` leaves patient references out (examples are then
    numbered by their place in the report), ``examples`` caps the example
    patients per rule."""
    before, after = _ruleset(report.from_ruleset), _ruleset(report.to_ruleset)
    rules = report.rules()
    heading = f"{before}{_ARROW}{after}"
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>Version diff {_e(heading)}</title>", f"<style>{_STYLE}</style>",
             "</head><body>", f"<h1>Version diff: {_e(heading)}</h1>"]
    titles = [report.from_ruleset.get("title"), report.to_ruleset.get("title")]
    if any(titles):
        parts.append(f'<p class="muted">{_e(titles[0] or "")}'
                     f'{_ARROW + _e(titles[1]) if titles[1] != titles[0] else ""}</p>')
    parts.append(f"<p>Evaluated as of {_e(report.as_of)} (intake {_e(report.mode)}).</p>")
    parts.append("<h2>Summary</h2><table><tbody>")
    for label, value in (("patients", report.patients), ("results change", report.changed),
                         ("results unchanged", report.unchanged),
                         ("patients failing under either version", report.errors),
                         ("resources or files not read", report.resource_errors),
                         ("rules whose results change", len(rules))):
        parts.append(f'<tr><th>{_e(label)}</th><td class="n">{value:,}</td></tr>')
    parts.append("</tbody></table>")
    if rules:
        parts.append("<table><thead><tr><th>rule</th><th>title</th>"
                     "<th>patients gaining an item</th><th>losing one</th>"
                     "<th>with one changed</th></tr></thead><tbody>")
        for rule, entry in rules.items():
            parts.append(f'<tr><td><a href="#rule-{_e(rule)}"><code>{_e(rule)}</code></a></td>'
                         f"<td>{_e(entry['title'] or '')}</td>"
                         + "".join(f'<td class="n">{entry[how]:,}</td>' for how in _CHANGES)
                         + "</tr>")
        parts.append("</tbody></table>")
        parts.append('<p class="muted">Counts are patients: a patient gaining two items of a '
                     "rule counts once for it.</p>")
    else:
        parts.append("<p>No rule's results change.</p>")
    for rule, entry in rules.items():
        parts += _rule_section(report, rule, entry, identifiers=identifiers,
                               examples=examples)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
