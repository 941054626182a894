"""Reference documentation of a ruleset, generated from its files.

The document can never drift from the rules: it is made from the loaded
ruleset versions (rules, thresholds, value sets, citations, the claims of the
source text and the rules encoding them), and a test fails when the copy in
``docs/rulesets/`` is stale. Regenerate with ``cdss docs ID --out FILE``.
"""

from __future__ import annotations

from collections.abc import Sequence

from cdss.rulesets._compiled import CompiledRule, Pattern
from cdss.rulesets._registry import available_rulesets, load_ruleset
from cdss.rulesets._ruleset import Ruleset

__all__ = ["render_ruleset_doc"]


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _pattern(p: Pattern) -> str:
    tests = []
    for t in p.tests:
        if (t.field, t.op, t.value) == ("status", "eq", "present"):
            continue
        if t.op == "exists":
            tests.append(f"{t.field} {'recorded' if t.value else 'not recorded'}")
            continue
        sym = {"eq": "=", "ne": "≠", "lt": "<", "le": "≤", "gt": ">", "ge": "≥", "in": "in"}[t.op]
        value = ", ".join(map(str, t.value)) if t.op == "in" else t.value
        tests.append(f"{t.field} {sym} {value}")
    return f"`{p.fact}`" + (f" ({'; '.join(tests)})" if tests else "")


def _when(rule: CompiledRule) -> str:
    groups = (("all", rule.all), ("any", rule.any), ("none", rule.none))
    return "; ".join(f"{name} of " + ", ".join(_pattern(p) for p in patterns)
                     for name, patterns in groups if patterns)


def _then(rule: CompiledRule) -> str:
    out = []
    for a in rule.rule.then:
        if a.derive:
            out.append(f"derive `{a.derive}`")
        elif a.flag:
            out.append(f"flag `{a.flag.code}` ({a.flag.severity})")
        elif a.referral:
            out.append(f"referral `{a.referral.code}` ({a.referral.urgency})")
        elif a.plan:
            out.append(f"plan `{a.plan}`")
        elif a.emphasize:
            out.append(f"emphasise `{a.emphasize.plan}`")
        elif a.tailor:
            out.append(f"tailor `{a.tailor.plan}` → {a.tailor.variant}")
        elif a.suppress:
            target = a.suppress.plan or f"category {a.suppress.category}"
            out.append(f"suppress `{target}`")
        elif a.request:
            out.append(f"request `{a.request.analyte}`")
    return "; ".join(out)


def _version_section(rs: Ruleset) -> list[str]:
    rfile = rs.file
    lines = [
        f"## {rs.spec} ({rfile.status})",
        "",
        f"sha256 `{rs.sha256}`; FHIR {rfile.fhir_release}; "
        f"canonical URL {rfile.canonical_url or '(none)'}",
        "",
        _cell(rfile.description),
        "",
        "### Claims of the source text and the rules encoding them",
        "",
        "| claim | statement | rules |",
        "|---|---|---|",
    ]
    for claim, text in rfile.claims.items():
        rules = [r.id for r in rs.rules if claim in r.rule.claims]
        encoded = ", ".join(rules) or "not encoded (see description)"
        lines.append(f"| {claim} | {_cell(text)} | {encoded} |")
    lines += ["", "### Thresholds", "", "| name | value | unit | meaning |", "|---|---|---|---|"]
    for name, th in rfile.thresholds.items():
        lines.append(f"| `{name}` | {th.value:g} | {th.unit} | {_cell(th.description or '')} |")
    lines += ["", "### Rules", "",
              "| stratum | rule | when | then | citation |", "|---|---|---|---|---|"]
    for rule in sorted(rs.rules, key=lambda r: (r.stratum, r.index)):
        cite = rfile.sources[rule.rule.citation.source]
        lines.append(
            f"| {rule.stratum} | **{rule.id}** {_cell(rule.rule.title)} | {_cell(_when(rule))} | "
            f"{_cell(_then(rule))} | {_cell(cite.title)}: {_cell(rule.rule.citation.section)} |")
    lines += ["", "### Plan items, in plan order", "",
              "| code | category | text |", "|---|---|---|"]
    for item in rfile.plan_items:
        text = _cell(item.text)
        for name, variant in item.variants.items():
            text += f" *Variant {name}:* {_cell(variant)}"
        lines.append(f"| `{item.code}` | {item.category} | {text} |")
    lines += ["", "### Sources", ""]
    for key, source in rfile.sources.items():
        extra = f", {source.publisher}" if source.publisher else ""
        url = f" <{source.url}>" if source.url else ""
        lines.append(f"- `{key}`: {_cell(source.title)}{extra}{url}")
    if rfile.invariants:
        lines += ["", "### Declared invariants", ""]
        for inv in rfile.invariants:
            lines.append(f"- a {inv.direction} `{inv.analyte}` never removes flag "
                         f"`{inv.keeps_flag}`")
    if rfile.policies:
        lines += ["", "### Declared policies", ""]
        for policy in rfile.policies:
            flags = (" (" + ", ".join(f"`{c}`" for c in policy.flags) + ")"
                     if policy.flags else "")
            if policy.no_plan_category is not None:
                lines.append(f"- with a `{policy.flag_severity}` flag{flags}, the plan keeps no "
                             f"`{policy.no_plan_category}` item")
            else:
                leads = " or ".join(f"`{c}`" for c in policy.plan_leads_with)
                lines.append(f"- with a `{policy.flag_severity}` flag{flags}, the plan leads "
                             f"with a {leads} item, ahead of every other item")
    if rfile.population is not None:
        lines += ["", "### Population", "", rfile.population.description]
        if rfile.population.min_age is not None:
            lines += ["", f"A patient younger than `{rfile.population.min_age}` "
                          f"({rfile.thresholds[rfile.population.min_age].value:g} years) is "
                          "outside it: the Assessment carries an `outside-population` note."]
    if rfile.boundary_rounding == "charted":
        lines += ["", "### Values at a threshold", "",
                  "A lab charted in another unit at a threshold's equivalent, at the "
                  "precision it was charted with, is read as the threshold itself (an "
                  "`at-threshold` note says so): a conversion never moves a value across a "
                  "threshold."]
    return lines


def _valuesets_section(rs: Ruleset) -> list[str]:
    vs = rs.valuesets
    lines = ["## Value sets", "",
             f"As used by {rs.spec}. Verified: the code was checked against a published "
             "table (✓) or could not be (✗).", "",
             "| concept | kind | codes |", "|---|---|---|"]
    systems = {url: alias for alias, url in vs.systems.items()}
    for name, concept in sorted(vs.concepts.items(), key=lambda kv: (kv[1].kind, kv[0])):
        codes = []
        for code in concept.codes:
            system = systems.get(vs.systems.get(code.system, code.system), code.system)
            mark = "✓" if code.verified else "✗"
            codes.append(f"{system} {code.code}{'*' if code.prefix else ''} {mark}")
        lines.append(f"| `{name}` | {concept.kind} | {_cell(', '.join(codes))} |")
    lines += ["", "`*` a category prefix: matches every code under it.", "",
              "### Analytes", "",
              "| analyte | canonical unit | lookback (days) | molar mass (g/mol) | valence | "
              "plausible range | order (LOINC) |", "|---|---|---|---|---|---|---|"]
    for name, an in vs.analytes.items():
        plaus = f"{an.plausible[0]:g} to {an.plausible[1]:g}" if an.plausible else ""
        ratio = f" (= {an.ratio_of[0]} / {an.ratio_of[1]})" if an.ratio_of else ""
        lines.append(f"| `{name}`{ratio} | {an.canonical_unit} | {an.lookback_days} | "
                     f"{an.molar_mass_g_per_mol or ''} | {an.valence or ''} | {plaus} | "
                     f"{an.order_loinc or ''} |")
    return lines


def render_ruleset_doc(ruleset_id: str, *, versions: Sequence[str] | None = None) -> str:
    """Markdown reference of every version of ``ruleset_id`` (newest first)."""
    found = sorted((s.partition("@")[2] for s in available_rulesets()
                    if s.partition("@")[0] == ruleset_id),
                   key=lambda v: tuple(int(p) for p in v.split(".")), reverse=True)
    chosen = [v for v in found if versions is None or v in versions]
    loaded = [load_ruleset(f"{ruleset_id}@{v}") for v in chosen]
    if not loaded:
        return f"# {ruleset_id}\n\nNo versions found.\n"
    lines = [
        f"# Ruleset `{ruleset_id}`",
        "",
        "Generated from the ruleset files by `cdss docs`; do not edit by hand (a test fails "
        "when this file is stale).",
        "",
        f"**{_cell(loaded[0].file.title)}**. Versions: "
        + ", ".join(f"{rs.version} ({rs.file.status})" for rs in loaded) + ".",
        "",
    ]
    for rs in loaded:
        lines += [*_version_section(rs), ""]
    lines += _valuesets_section(loaded[0])
    return "\n".join(lines) + "\n"
