"""An Assessment as plain text a clinician can read: flags by severity,
referrals, the plan in order with why, what was suppressed and why, what data
is missing, and data-quality notes."""

from __future__ import annotations

import textwrap

from cdss.assessment import Assessment

__all__ = ["render_text"]

_MARK = {"critical": "!!!", "high": "!! ", "moderate": "!  ", "low": "-  "}


def _wrap(text: str, indent: str) -> str:
    return textwrap.fill(" ".join(text.split()), width=88, initial_indent=indent,
                         subsequent_indent=indent)


def render_text(assessment: Assessment) -> str:
    """Render ``assessment`` as readable text (deterministic)."""
    a = assessment
    lines = [
        f"Assessment of {a.patient or 'an unidentified patient'} "
        f"as of {a.as_of.date().isoformat()}",
        f"Ruleset {a.ruleset.spec} ({a.ruleset.title}), sha256 {a.ruleset.sha256[:12]}, "
        f"{a.engine} engine",
        "",
        "Flags",
    ]
    if not a.flags:
        lines.append("  none")
    for flag in a.flags:
        lines.append(f"  {_MARK[flag.severity]} {flag.severity.upper():8} {flag.display} "
                     f"[{flag.code}, {flag.rule_id}]")
        lines.append(_wrap(flag.rationale, "        "))
        for ev in flag.evidence:
            shown = ", ".join(f"{k}={v}" for k, v in sorted(ev.values.items())
                              if k in ("value", "unit", "status", "site", "nocturnal"))
            lines.append(f"        evidence: {ev.text or ev.fact}"
                         + (f" ({shown})" if shown and not ev.text else "")
                         + (f" from {', '.join(ev.sources)}" if ev.sources else ""))
        lines.append(f"        source: {flag.citation.title}, section {flag.citation.section!r}")
    lines += ["", "Referrals"]
    if not a.referrals:
        lines.append("  none")
    for ref in a.referrals:
        lines.append(f"  - {ref.display} ({ref.urgency}) [{ref.code}, {ref.rule_id}]")
    lines += ["", "Plan"]
    if not a.plan:
        lines.append("  none")
    for item in a.plan:
        lines.append(f"  {item.order}. [{item.category}] " + " ".join(item.text.split()))
        lines.append(_wrap(f"why: {item.why}", "       "))
        for reason in item.emphasis:
            lines.append(_wrap(f"emphasised: {reason}", "       "))
        for reason in item.tailoring:
            lines.append(_wrap(f"tailored: {reason}", "       "))
    if a.suppressed:
        lines += ["", "Suppressed"]
        for sup in a.suppressed:
            lines.append(f"  - {sup.code}: " + " ".join(sup.reason.split()) + f" [{sup.rule_id}]")
    lines += ["", "Data requests"]
    if not a.data_requests:
        lines.append("  none")
    for req in a.data_requests:
        loinc = f" (LOINC {req.loinc})" if req.loinc else ""
        lines.append(f"  - order {req.display}{loinc}: {req.reason}")
    if a.data_quality:
        lines += ["", "Data quality"]
        for note in a.data_quality:
            lines.append(f"  - {note.resource or 'record'}: {note.message}")
    return "\n".join(lines) + "\n"
