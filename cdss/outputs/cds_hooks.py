"""CDS Hooks 2.0 cards: renderings of an Assessment.

:func:`cards` renders an Assessment as cards: one per flag (its referral as a
suggestion that creates a draft ServiceRequest), one for data requests
(suggestions that create lab orders) and one for the plan. It knows only the
Assessment; the protocol (discovery, requests, prefetch) is :mod:`cdss.hooks`.

Cards are deterministic: every ``uuid`` is a uuid5 of the hook instance and
the card's (or suggestion's) content.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from cdss.assessment import Assessment, Citation, DataRequest, Evidence, Flag, Referral
from cdss.errors import InvalidArgument
from cdss.outputs.fhir import (
    NAMESPACE,
    care_plan,
    code_system,
    lab_order_request,
    referral_request,
)
from cdss.rulesets import Ruleset

__all__ = ["CARD_EXTENSION", "MAX_SUMMARY", "OVERRIDE_REASONS_3", "cards"]

#: A card summary is a "<140-character" sentence (CDS Hooks 2.0, Card attributes).
MAX_SUMMARY = 139
_INDICATOR = {"critical": "critical", "high": "warning", "moderate": "warning", "low": "info"}
_NON_ADHERENCE = "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes"
#: The override reasons CDS Hooks 3.0 suggests (its example value set
#: ``non-adherence-reason-clinical``), offered on 3.0 cards by rulesets that
#: declare no catalogue of their own: (code, display).
OVERRIDE_REASONS_3 = (
    ("cds-not-applicable", "PC CDS does not apply to patient"),
    ("action-completed", "Recommended action was already completed"),
    ("cds-suboptimal-context", "PC CDS delivered in suboptimal context"),
    ("recipient-disagrees-evidence",
     "Recipient disagrees with recommendation because of issues with the evidence"),
    ("recipient-concerns-outcomes", "Recipient has concerns regarding potential health outcomes"),
    ("patient-contraindication", "Patient has contraindication to recommended action"),
    ("does-not-align-preferences",
     "Recommendation does not align with patient preferences or values"),
    ("patient-refuses", "Patient refuses/declines (no context given)*"),
    ("not-convenient-feasible", "Recommendation is not convenient or feasible"),
    ("service-not-available", "Treatment or service is not practically available"),
    ("too-costly-uncovered", "Recommended action is too costly or not covered by insurance"),
    ("recipient-does-not-understand",
     "Recipient does not understand the recommended action or know how to perform the "
     "recommended action"),
)


# --------------------------------------------------------------------------- #
# Cards
# --------------------------------------------------------------------------- #
def _text(value: str) -> str:
    return " ".join(value.split())


def _summary(text: str) -> str:
    text = _text(text)
    if len(text) <= MAX_SUMMARY:
        return text
    cut = text[: MAX_SUMMARY - 1].rsplit(" ", 1)[0].rstrip(" ,;:")
    return cut + "…"


def _code_span(value: Any) -> str:
    """A value from patient data as inline Markdown code (never interpreted)."""
    return "`" + str(value).replace("`", "'") + "`"


def _uuid(hook_instance: uuid.UUID | str | None, kind: str, content: Mapping[str, Any]) -> str:
    body = orjson.dumps(content, option=orjson.OPT_SORT_KEYS).decode()
    return str(uuid.uuid5(NAMESPACE, f"{hook_instance or ''}|{kind}|{body}"))


def _source(ruleset: Ruleset | None, assessment: Assessment,
            topic: dict[str, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"label": assessment.ruleset.spec}
    if ruleset is not None and ruleset.file.canonical_url:
        out["url"] = ruleset.file.canonical_url
    if topic:
        out["topic"] = topic
    return out


def _evidence_md(flag: Flag | Referral) -> list[str]:
    lines = []
    for ev in flag.evidence:
        if ev.kind == "order":  # the draft orders are named on their own
            continue
        shown = ", ".join(f"{k} {_code_span(v)}" for k, v in sorted(ev.values.items())
                          if k in ("value", "unit", "status", "site", "nocturnal", "age",
                                   "sex"))
        src = ", ".join(_code_span(s) for s in ev.sources)
        if "charted_value" in ev.values:  # a lab: converted, rounded, and as charted
            v = ev.values
            at = f", {v['charted_at']}" if v.get("charted_at") else ""
            lines.append(f"- {ev.fact.replace('_', ' ')} {_code_span(v['value'])} {v['unit']} "
                         f"(charted {_code_span(v['charted_value'])} "
                         f"{_text(str(v['charted_unit']))}{at})"
                         + (f" from {src}" if src else ""))
            continue
        lines.append(f"- {ev.fact.replace('_', ' ')}" + (f" ({shown})" if shown else "")
                     + (f" from {src}" if src else ""))
    return lines


def _citation_md(flag: Flag | Referral) -> str:
    c = flag.citation
    title = f"[{c.title}]({c.url})" if c.url else c.title
    return f"**Source:** {title}, section \"{c.section}\" (rule `{flag.rule_id}`)"


def _suggestion(label: str, description: str, resource: Mapping[str, Any],
                hook_instance: uuid.UUID | str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"label": label, "actions": [
        {"type": "create", "description": description, "resource": dict(resource)}]}
    body["uuid"] = _uuid(hook_instance, "suggestion", body)
    return body


def _finish(card: dict[str, Any], hook_instance: uuid.UUID | str | None,
            links: Sequence[Mapping[str, str]] = ()) -> dict[str, Any]:
    if card.get("suggestions"):
        card["selectionBehavior"] = "any"
    if links:
        card["links"] = [dict(link) for link in links]
    card["uuid"] = _uuid(hook_instance, "card", card)
    return card


def _links(*items: Flag | Referral) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for item in items:
        c = item.citation
        if c.url and all(link["url"] != c.url for link in out):
            out.append({"label": c.title, "url": c.url, "type": "absolute"})
    return out


def _referral_label(ref: Referral) -> str:
    """The referral's name, saying it is urgent unless the name already does."""
    urgent = ref.urgency == "urgent" and "urgent" not in ref.display.lower()
    return ref.display + (" (urgent)" if urgent else "")


def _referral_suggestion(ref: Referral, assessment: Assessment,
                         hook_instance: uuid.UUID | str | None) -> dict[str, Any]:
    urgency = "urgent " if ref.urgency == "urgent" else ""
    return _suggestion(f"Propose {urgency}referral: {ref.display}",
                       f"Create a draft {ref.urgency} referral ({ref.display})",
                       referral_request(ref, assessment), hook_instance)


def _override_reasons(ruleset: Ruleset | None, rule_id: str,
                      version: str = "2.0") -> list[dict[str, str]]:
    """The ``overrideReasons`` a rule's cards offer: the ruleset's catalogue, or
    the rule's selection of it; when the ruleset declares none, none in 2.0
    and the 3.0 example value set (:data:`OVERRIDE_REASONS_3`) in 3.0."""
    if ruleset is None or not ruleset.file.override_reasons:
        if version == "3.0":
            return [{"system": _NON_ADHERENCE, "code": c, "display": d}
                    for c, d in OVERRIDE_REASONS_3]
        return []
    rule = next((r for r in ruleset.file.rules if r.id == rule_id), None)
    chosen = set(rule.override_reasons) if rule is not None and rule.override_reasons else None
    system = code_system(ruleset.id, "override-reason")
    return [{"system": r.system or system, "code": r.code, "display": r.display}
            for r in ruleset.file.override_reasons if chosen is None or r.code in chosen]


def _flag_card(flag: Flag, refs: list[Referral], assessment: Assessment,
               ruleset: Ruleset | None, hook_instance: uuid.UUID | str | None,
               version: str = "2.0") -> dict[str, Any]:
    summary = flag.display
    if refs:
        summary += f": {_referral_label(refs[0])}"
    lines = [f"**Severity:** {flag.severity}", "", _text(flag.rationale)]
    evidence = _evidence_md(flag)
    if evidence:
        lines += ["", "**Evidence**", "", *evidence]
    for ref in refs:
        lines += ["", f"**Referral:** {ref.display} ({ref.urgency})"]
    lines += ["", _citation_md(flag)]
    card: dict[str, Any] = {
        "summary": _summary(summary),
        "indicator": _INDICATOR[flag.severity],
        "detail": "\n".join(lines),
        "source": _source(ruleset, assessment, {
            "system": code_system(assessment.ruleset.id, "flag"), "code": flag.code,
            "display": flag.display}),
    }
    suggestions = [_referral_suggestion(r, assessment, hook_instance) for r in refs]
    if suggestions:
        card["suggestions"] = suggestions
    reasons = _override_reasons(ruleset, flag.rule_id, version)
    if reasons:
        card["overrideReasons"] = reasons
    return _finish(card, hook_instance, _links(flag, *refs))


def _order_name(order: Evidence) -> str:
    """What a draft order says (its medication or lab), for a card."""
    return _text(str(order.values.get("text") or order.fact))


def _order_ref(order: Evidence) -> str:
    return str(order.values.get("reference") or (order.sources[0] if order.sources else ""))


def _order_lines(orders: Sequence[Evidence]) -> list[str]:
    return [f"- {_code_span(_order_ref(o))}: {_code_span(_order_name(o))}" for o in orders]


def _order_card(flag: Flag, order: Evidence, assessment: Assessment, ruleset: Ruleset | None,
                hook_instance: uuid.UUID | str | None, version: str = "2.0") -> dict[str, Any]:
    """A card on one draft order a flag concerns: which order (reference and
    text), why, the evidence, the citation, and, when the rule suggests
    removing the order, a ``delete`` suggestion of it."""
    name, ref = _order_name(order), _order_ref(order)
    lines = [f"**Draft order:** {_code_span(ref)} {_code_span(name)}", "",
             f"**Severity:** {flag.severity}", "", _text(flag.rationale)]
    evidence = _evidence_md(flag)
    if evidence:
        lines += ["", "**Evidence**", "", *evidence]
    lines += ["", _citation_md(flag)]
    card: dict[str, Any] = {
        "summary": _summary(f"{flag.display} ({name})"),
        "indicator": _INDICATOR[flag.severity],
        "detail": "\n".join(lines),
        "source": _source(ruleset, assessment, {
            "system": code_system(assessment.ruleset.id, "flag"), "code": flag.code,
            "display": flag.display}),
    }
    if flag.order_suggestion == "remove":
        body: dict[str, Any] = {"label": f"Remove the draft order: {name}", "actions": [
            {"type": "delete", "description": f"Remove the draft order {ref} ({name})",
             "resourceId": [ref]}]}
        body["uuid"] = _uuid(hook_instance, "suggestion", body)
        card["suggestions"] = [body]
    if version != "2.0":  # 2.0 order cards stay as they were
        reasons = _override_reasons(ruleset, flag.rule_id, version)
        if reasons:
            card["overrideReasons"] = reasons
    return _finish(card, hook_instance, _links(flag))


def _order_lab_card(req: DataRequest, assessment: Assessment, ruleset: Ruleset | None,
                    hook_instance: uuid.UUID | str | None) -> dict[str, Any]:
    """A card asking for a lab the draft orders of ``req`` need: which orders,
    why, and a suggestion creating the lab order (its ``supportingInfo``
    naming the draft orders)."""
    code = f" (LOINC {req.loinc})" if req.loinc else ""
    names = ", ".join(dict.fromkeys(_order_name(o) for o in req.orders))
    lines = [f"**{req.display}**{code} is needed to judge the draft "
             f"order{'s' if len(req.orders) > 1 else ''}:", "", *_order_lines(req.orders), "",
             _text(req.reason)]
    if req.citation is not None:
        c = req.citation
        title = f"[{c.title}]({c.url})" if c.url else c.title
        lines += ["", f"**Source:** {title}, section \"{c.section}\" (rule `{req.rule_id}`)"]
    card: dict[str, Any] = {
        "summary": _summary(f"No recent {req.display.lower()} for the draft order ({names})"),
        "indicator": "warning",
        "detail": "\n".join(lines),
        "source": _source(ruleset, assessment),
    }
    order = lab_order_request(req, assessment)
    if order is not None:
        order = {**order, "supportingInfo": [{"reference": _order_ref(o)}
                                             for o in req.orders]}
        card["suggestions"] = [_suggestion(f"Order {req.display}",
                                           f"Create a draft order for {req.display}{code}",
                                           order, hook_instance)]
    return _finish(card, hook_instance)


def _referral_card(ref: Referral, assessment: Assessment, ruleset: Ruleset | None,
                   hook_instance: uuid.UUID | str | None, version: str = "2.0") -> dict[str, Any]:
    lines = [f"**Urgency:** {ref.urgency}", "", _text(ref.rationale)]
    evidence = _evidence_md(ref)
    if evidence:
        lines += ["", "**Evidence**", "", *evidence]
    lines += ["", _citation_md(ref)]
    card = {
        "summary": _summary(f"Referral: {_referral_label(ref)}"),
        "indicator": "warning" if ref.urgency == "urgent" else "info",
        "detail": "\n".join(lines),
        "source": _source(ruleset, assessment, {
            "system": code_system(assessment.ruleset.id, "referral"), "code": ref.code,
            "display": ref.display}),
        "suggestions": [_referral_suggestion(ref, assessment, hook_instance)],
    }
    reasons = _override_reasons(ruleset, ref.rule_id, version)
    if reasons:
        card["overrideReasons"] = reasons
    return _finish(card, hook_instance, _links(ref))


def _data_card(assessment: Assessment, ruleset: Ruleset | None,
               hook_instance: uuid.UUID | str | None) -> dict[str, Any]:
    requests = [r for r in assessment.data_requests if not r.orders]
    lines = ["The ruleset needs these results to complete its assessment:", ""]
    suggestions = []
    for req in requests:
        code = f" (LOINC {req.loinc})" if req.loinc else ""
        lines.append(f"- **{req.display}**{code}: {_text(req.reason)}")
        order = lab_order_request(req, assessment)
        if order is not None:
            suggestions.append(_suggestion(f"Order {req.display}",
                                           f"Create a draft order for {req.display}{code}",
                                           order, hook_instance))
    notes = [n for n in assessment.data_quality if n.code == "outside-lookback"]
    if notes:
        lines += ["", "**Not used**", ""]
        lines += [f"- {_text(n.message)}" + (f" ({_code_span(n.resource)})" if n.resource else "")
                  for n in notes]
    card: dict[str, Any] = {
        "summary": _summary("Missing lab results: "
                            + ", ".join(r.display for r in requests)),
        "indicator": "info",
        "detail": "\n".join(lines),
        "source": _source(ruleset, assessment),
    }
    if suggestions:
        card["suggestions"] = suggestions
    return _finish(card, hook_instance)


def _left_out_card(assessment: Assessment, ruleset: Ruleset | None,
                   hook_instance: uuid.UUID | str | None) -> dict[str, Any]:
    left = assessment.left_out
    lines = ["These resources could not be read and were left out; the other cards rest on "
             "the rest of the record:", ""]
    lines += [f"- {_code_span(lo.resource)}" + (f" {_code_span(lo.field)}" if lo.field else "")
              + f": {_text(lo.reason)}" for lo in left]
    noun = "resource" if len(left) == 1 else "resources"
    card: dict[str, Any] = {
        "summary": _summary(f"Incomplete assessment: {len(left)} {noun} could not be read"),
        "indicator": "warning",
        "detail": "\n".join(lines),
        "source": _source(ruleset, assessment),
    }
    return _finish(card, hook_instance)


def _plan_card(assessment: Assessment, ruleset: Ruleset | None,
               hook_instance: uuid.UUID | str | None) -> dict[str, Any]:
    n = len(assessment.plan)
    summary = f"Prevention plan: {n} item{'s' if n != 1 else ''}"
    if assessment.suppressed:
        summary += f", {len(assessment.suppressed)} withheld"
    lines = []
    for item in assessment.plan:
        lines.append(f"{item.order}. **{item.category}**: {_text(item.text)}")
        lines.append(f"   *Why:* {_text(item.why)}")
        for reason in item.emphasis:
            lines.append(f"   *Emphasised:* {_text(reason)}")
    if assessment.suppressed:
        lines += ["", "**Withheld for now**", ""]
        lines += [f"- {_text(s.text)} *Reason:* {_text(s.reason)}" for s in assessment.suppressed]
    card: dict[str, Any] = {
        "summary": _summary(summary),
        "indicator": "info",
        "detail": "\n".join(lines),
        "source": _source(ruleset, assessment),
    }
    plan = care_plan(assessment)
    if plan is not None:
        card["suggestions"] = [_suggestion("Add the plan as a draft care plan",
                                           "Create a draft CarePlan with the plan items",
                                           plan, hook_instance)]
    return _finish(card, hook_instance)


#: The key (reverse-domain, as CDS Hooks asks) of the card extension naming ruleset and engine.
CARD_EXTENSION = "dev.cdss.provenance"


def _cited(rule_ids: Sequence[str], assessment: Assessment) -> list[dict[str, str]]:
    """The citations of the rules ``rule_ids`` behind a card, as the
    Assessment's flags, referrals, data requests, plan items and suppressions
    made by those rules carry them."""
    ids = set(rule_ids)
    found: list[tuple[str, Citation]] = []
    found += [(f.rule_id, f.citation) for f in assessment.flags if f.rule_id in ids]
    found += [(r.rule_id, r.citation) for r in assessment.referrals if r.rule_id in ids]
    found += [(r.rule_id, r.citation) for r in assessment.data_requests
              if r.rule_id in ids and r.citation is not None]
    for item in assessment.plan:
        if ids & set(item.rule_ids):
            found += [(", ".join(item.rule_ids), c) for c in item.citations]
    found += [(s.rule_id, s.citation) for s in assessment.suppressed if s.rule_id in ids]
    out: list[dict[str, str]] = []
    for rule_id, c in found:
        entry = {"rule": rule_id, "source": c.source, "title": c.title, "section": c.section}
        if c.url:
            entry["url"] = c.url
        if entry not in out:
            out.append(entry)
    return out


def cards(assessment: Assessment, ruleset: Ruleset | None = None, *,
          hook_instance: uuid.UUID | str | None = None,
          only_orders: bool = False, version: str = "2.0") -> list[dict[str, Any]]:
    """``assessment`` as CDS Hooks cards, most urgent first.

    One card per flag (``indicator``: critical → critical, high and moderate →
    warning, low → info), carrying as a suggestion each referral its rule made
    (a ``create`` action with a draft ServiceRequest); a card for any referral
    no flag carries; a warning when resources were left out as unreadable; one
    for data requests (suggestions order the labs); one for the plan (a
    suggestion creates a draft CarePlan). A flag on draft orders gives one
    card per order instead, naming it (a ``delete`` suggestion of it when the
    rule suggests removing it), and a lab needed to judge draft orders its
    own card, whose suggestion creates the lab order. ``only_orders`` (the
    order hooks) keeps only the cards on draft orders and the warning on
    resources left out. ``source.label`` is the ruleset's ``id@version`` and
    ``source.url`` its canonical URL. Every card and suggestion has a uuid5
    of ``hook_instance`` and its content. Each card's ``extension`` (key
    :data:`CARD_EXTENSION`) names the ruleset, its version, developer,
    release date and sha256, the engine that ran, the card's ``kind``
    (``flag``, ``order``, ``referral``, ``left-out``, ``data-request``,
    ``order-lab``, ``plan``), the ``rules`` that made it (none for
    ``left-out``) and their citations. Flag and referral cards offer the
    ruleset's ``overrideReasons`` (its ``override_reasons``, or the rule's
    selection of them) when it declares any. ``version`` is the CDS Hooks
    version of the call (``2.0`` or ``3.0``): 3.0 cards differ only in their
    override reasons, offered on flag, referral and order cards, which are
    the 3.0 example value set (:data:`OVERRIDE_REASONS_3`) when the ruleset
    declares none.
    """
    if not isinstance(assessment, Assessment):
        raise InvalidArgument(f"assessment must be an Assessment, not {type(assessment).__name__}")
    if version not in ("2.0", "3.0"):
        raise InvalidArgument(f"version must be '2.0' or '3.0', not {version!r}")
    out: list[tuple[dict[str, Any], str, list[str]]] = []  # card, kind, rule ids
    attached: set[str] = set()
    for flag in assessment.flags:
        if flag.orders:
            out += [(_order_card(flag, order, assessment, ruleset, hook_instance, version),
                     "order",
                     [flag.rule_id]) for order in flag.orders]
            continue
        if only_orders:
            continue
        refs = [r for r in assessment.referrals
                if r.rule_id == flag.rule_id and r.code not in attached]
        attached.update(r.code for r in refs)
        out.append((_flag_card(flag, refs, assessment, ruleset, hook_instance, version), "flag",
                    [flag.rule_id]))
    for ref in assessment.referrals:
        if ref.code not in attached and not only_orders:
            out.append((_referral_card(ref, assessment, ruleset, hook_instance, version),
                        "referral",
                        [ref.rule_id]))
    if assessment.left_out:
        out.append((_left_out_card(assessment, ruleset, hook_instance), "left-out", []))
    for req in assessment.data_requests:
        if req.orders:
            out.append((_order_lab_card(req, assessment, ruleset, hook_instance), "order-lab",
                        [req.rule_id]))
    unordered = [r for r in assessment.data_requests if not r.orders]
    if unordered and not only_orders:
        out.append((_data_card(assessment, ruleset, hook_instance), "data-request",
                    _rules(*unordered)))
    if (assessment.plan or assessment.suppressed) and not only_orders:
        out.append((_plan_card(assessment, ruleset, hook_instance), "plan",
                    _rules(*assessment.plan, *assessment.suppressed)))
    ident = assessment.ruleset
    developer = ident.developer or (ruleset.file.developer if ruleset is not None else None)
    released = ident.release_date or (
        ruleset.file.release_date.isoformat()
        if ruleset is not None and ruleset.file.release_date else None)
    provenance: dict[str, Any] = {"ruleset": ident.spec, "version": ident.version,
                                  "sha256": ident.sha256, "engine": assessment.engine}
    if developer:
        provenance["developer"] = developer
    if released:
        provenance["releaseDate"] = released
    for card, kind, rule_ids in out:  # after the uuids, which depend on the content only
        ext: dict[str, Any] = {**provenance, "kind": kind}
        if rule_ids:  # a left-out card comes from the data, not from a rule
            ext["rules"] = rule_ids
            cited = _cited(rule_ids, assessment)
            if cited:
                ext["citations"] = cited
        card["extension"] = {CARD_EXTENSION: ext}
    return [card for card, _, _ in out]


def _rules(*items: Any) -> list[str]:
    """The rule ids behind ``items``, each once, in order."""
    seen: dict[str, None] = {}
    for item in items:
        for rule_id in item.rule_ids if hasattr(item, "rule_ids") else [item.rule_id]:
            seen.setdefault(rule_id, None)
    return list(seen)
