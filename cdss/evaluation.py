"""``evaluate()``: one patient's FHIR record in, an explained Assessment out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime, timezone, tzinfo
from pathlib import Path
from typing import Any

from cdss.assessment import (
    SEVERITY_RANK,
    Assessment,
    Citation,
    DataRequest,
    Evidence,
    Flag,
    PlanItem,
    Referral,
    RulesetIdentity,
    Suppressed,
    TraceEntry,
)
from cdss.engine import Firing, resolve_engine, run
from cdss.errors import InvalidArgument
from cdss.facts import Fact, Facts, UnmappedCodes, build_facts, contributes, parse_time
from cdss.intake import read_record
from cdss.rulesets import ORDER, Ruleset, load_ruleset

__all__ = ["assess", "evaluate", "extract_facts", "resolve_as_of", "resolve_ruleset"]


def resolve_as_of(as_of: datetime | date | str | None) -> datetime:
    """``as_of`` as an aware datetime; ``None`` means now (UTC)."""
    if as_of is None:
        return datetime.now(timezone.utc)
    if isinstance(as_of, datetime):
        return as_of if as_of.tzinfo else as_of.replace(tzinfo=timezone.utc)
    if isinstance(as_of, date):
        return datetime.combine(as_of, datetime.min.time(), tzinfo=timezone.utc)
    if isinstance(as_of, str):
        try:
            return parse_time(as_of)
        except ValueError:
            raise InvalidArgument(f"as_of {as_of!r} is not an ISO date or date-time") from None
    raise InvalidArgument(f"as_of must be a datetime, date, ISO text or None, not {as_of!r}")


def resolve_ruleset(ruleset: Ruleset | str | None, paths: Sequence[str | Path] | None = None,
                    concept_maps: Sequence[str | Path] = ()) -> Ruleset:
    """A loaded ruleset, or the one ``"id[@version]"`` names (site ``paths``
    and ``concept_maps`` added); None is the default ruleset."""
    if isinstance(ruleset, Ruleset):
        if concept_maps:
            raise InvalidArgument("concept_maps apply when a ruleset is loaded: pass them to "
                                  "load_ruleset, or pass the ruleset as 'id[@version]'")
        return ruleset
    if ruleset is None or isinstance(ruleset, str):
        return load_ruleset(ruleset, paths=paths, concept_maps=concept_maps)
    raise InvalidArgument(f"ruleset must be a Ruleset or 'id[@version]', not {ruleset!r}")


def extract_facts(
    record: Any,
    *,
    ruleset: Ruleset | str,
    as_of: datetime | date | str | None = None,
    mode: str = "strict",
    on_invalid: str = "leave-out",
    timezone: str | tzinfo = "UTC",
    paths: Sequence[str | Path] | None = None,
    concept_maps: Sequence[str | Path] = (),
    draft_orders: Any = None,
    selections: Sequence[str] | None = None,
    reduced: Sequence[Mapping[str, Any]] = (),
) -> Facts:
    """Read ``record`` and return its :class:`~cdss.facts.Facts` for ``ruleset``
    (arguments as for :func:`evaluate`). ``reduced``: more of the patient's
    resources, known to contribute nothing (a cohort screen's spill reduces
    them to their type, id, patient reference and codes): tallied for the
    ``unmapped-code`` notes as if they were in the record."""
    rs = resolve_ruleset(ruleset, paths, concept_maps)
    when = resolve_as_of(as_of)
    terminology = rs.terminology
    # resources that can become no fact are tallied by code, never validated or read
    unmapped = UnmappedCodes()
    parsed = read_record(record, mode=mode, on_invalid=on_invalid, timezone=timezone,
                         relevant=lambda resource: contributes(resource, terminology),
                         unmapped=unmapped.add, reduced=reduced)
    return build_facts(parsed, rs.terminology, as_of=when,
                       finding_lookback_days=rs.file.finding_lookback_days,
                       on_invalid=on_invalid, draft_orders=draft_orders,
                       selections=selections, boundaries=rs.boundaries,
                       min_age=rs.min_age, unmapped=unmapped)


def evaluate(
    record: Any,
    *,
    ruleset: Ruleset | str | None = None,
    as_of: datetime | date | str | None = None,
    mode: str = "strict",
    engine: str = "auto",
    on_invalid: str = "leave-out",
    timezone: str | tzinfo = "UTC",
    paths: Sequence[str | Path] | None = None,
    concept_maps: Sequence[str | Path] = (),
    draft_orders: Any = None,
    selections: Sequence[str] | None = None,
) -> Assessment:
    """Evaluate one patient's FHIR R4 record with a ruleset.

    ``record`` is a Bundle, a resource, a list of resources, or JSON text or
    bytes of those. ``ruleset`` is ``"id"`` (latest active version),
    ``"id@version"``, a loaded :class:`~cdss.rulesets.Ruleset`, or None for
    the default ruleset (:func:`~cdss.rulesets.default_ruleset_id`); ``paths``
    adds folders of a site's own rulesets and ``concept_maps`` a site's code
    maps. ``as_of`` is the evaluation time every window is relative to
    (default: now). ``engine`` is ``"auto"`` (durable-rules where installed,
    else the reference evaluator), ``"rete"`` or ``"reference"``; the
    Assessment records which ran.

    A resource that cannot be read (a bad date, value or schema) is left out
    with a note and the Assessment says it is incomplete
    (``on_invalid="leave-out"``, the default); ``"refuse"`` raises
    :class:`~cdss.errors.InputError` instead. A record whose Patient cannot be
    read, or that holds two patients, is always refused. A dateTime with a
    time but no zone is read in ``timezone`` (an IANA name), with a note.

    ``draft_orders`` are the orders being written (a Bundle or a list of
    MedicationRequest, ServiceRequest, ... resources with status ``draft``, as
    CDS Hooks ``draftOrders``); they, and the record's draft
    MedicationRequests, become ``order`` facts, never active medications.
    ``selections`` are the references of the orders under review
    (order-select); ``None`` means every draft order (order-sign).
    Raises only :class:`~cdss.errors.CDSSError`.
    """
    rs = resolve_ruleset(ruleset, paths, concept_maps)
    facts = extract_facts(record, ruleset=rs, as_of=as_of, mode=mode, on_invalid=on_invalid,
                          timezone=timezone, draft_orders=draft_orders,
                          selections=selections)
    return assess(facts, rs, engine=engine)


def _evidence(matched: Sequence[str], by_id: dict[str, Fact]) -> list[Evidence]:
    out = []
    for fid in matched:
        fact = by_id[fid]
        values = dict(fact.values)
        text = None
        if fact.kind == "lab" and isinstance(values.get("value"), float):
            values["value"] = float(f"{values['value']:.4g}")
            text = f"{fact.name.replace('_', ' ')} {values['value']} {values.get('unit', '')}"
            if "charted_value" in values:
                text += (f" (charted {values['charted_value']} {values['charted_unit']}"
                         f"{', ' + str(values['charted_at']) if values.get('charted_at') else ''})")
            elif values.get("computed"):
                text += " (computed)"
        out.append(Evidence(fact=fact.name, kind=fact.kind, values=values,
                            sources=list(fact.sources), text=text))
    return out


def _lookback(ruleset: Ruleset, analyte: str) -> int | None:
    found = ruleset.valuesets.analytes.get(analyte)
    return found.lookback_days if found else None


def assess(facts: Facts, ruleset: Ruleset, *, engine: str = "auto") -> Assessment:
    """Run ``ruleset`` over already extracted ``facts``."""
    engine = resolve_engine(engine)
    firings, by_id = run(ruleset, facts.items, engine=engine)
    flags: dict[str, Flag] = {}
    referrals: dict[str, Referral] = {}
    planned: dict[str, list[Firing]] = {}
    emphasis: dict[str, list[str]] = {}
    tailoring: dict[str, list[tuple[str, str]]] = {}
    suppressions: list[tuple[Firing, Any]] = []
    requests: dict[str, DataRequest] = {}
    trace = []

    def cite(rule: Any) -> Citation:
        src = ruleset.file.sources[rule.citation.source]
        return Citation(source=rule.citation.source, title=src.title,
                        section=rule.citation.section, url=src.url)

    for firing in firings:
        rule = firing.rule.rule
        trace.append(TraceEntry(stratum=firing.rule.stratum, rule_id=rule.id, title=rule.title,
                                matched=list(firing.matched)))
        evidence = _evidence(firing.matched, by_id)
        for action in rule.then:
            if action.flag:
                new = Flag(code=action.flag.code, display=action.flag.display,
                           severity=action.flag.severity, rule_id=rule.id,
                           rationale=rule.rationale, citation=cite(rule), evidence=evidence,
                           order_suggestion=action.flag.order_suggestion)
                old = flags.get(new.code)
                if old is None or SEVERITY_RANK[new.severity] > SEVERITY_RANK[old.severity]:
                    flags[new.code] = new
            elif action.referral:
                ref = Referral(code=action.referral.code, display=action.referral.display,
                               urgency=action.referral.urgency, rule_id=rule.id,
                               rationale=rule.rationale, citation=cite(rule),
                               evidence=evidence)
                old_ref = referrals.get(ref.code)
                if old_ref is None or (ref.urgency == "urgent" and old_ref.urgency != "urgent"):
                    referrals[ref.code] = ref
            elif action.plan:
                planned.setdefault(action.plan, []).append(firing)
            elif action.emphasize:
                emphasis.setdefault(action.emphasize.plan, []).append(action.emphasize.reason)
            elif action.tailor:
                tailoring.setdefault(action.tailor.plan, []).append(
                    (action.tailor.variant, action.tailor.reason))
            elif action.suppress:
                suppressions.append((firing, action.suppress))
            elif action.request:
                analyte = action.request.analyte
                orders = _by_order([ev for ev in evidence if ev.kind == ORDER])
                if analyte not in requests:
                    concept = ruleset.valuesets.concepts[analyte]
                    requests[analyte] = DataRequest(
                        analyte=analyte, display=concept.display,
                        loinc=ruleset.order_loinc(analyte), reason=action.request.reason,
                        rule_id=rule.id, lookback_days=_lookback(ruleset, analyte),
                        orders=orders, citation=cite(rule))
                elif orders:  # a later rule needs it for draft orders too
                    old_req = requests[analyte]
                    merged = _by_order(_unique([*old_req.orders, *orders]))
                    requests[analyte] = old_req.model_copy(update={"orders": merged})

    catalogue = {item.code: (i, item) for i, item in enumerate(ruleset.file.plan_items)}
    removed: dict[str, Suppressed] = {}
    for firing, sup in suppressions:
        for code in sorted(planned, key=lambda c: catalogue[c][0]):
            item = catalogue[code][1]
            if code in removed or not (sup.plan == code or sup.category == item.category):
                continue
            removed[code] = Suppressed(code=code, category=item.category, text=item.text,
                                       reason=sup.reason, rule_id=firing.rule.id,
                                       citation=cite(firing.rule.rule))
    plan: list[PlanItem] = []
    for code in sorted(planned, key=lambda c: catalogue[c][0]):
        if code in removed:
            continue
        item = catalogue[code][1]
        sources = planned[code]
        variants = tailoring.get(code, [])
        text = item.variants[variants[0][0]] if variants else item.text
        plan.append(PlanItem(
            code=code, order=len(plan) + 1, category=item.category, text=text,
            why=sources[0].rule.rule.rationale,
            rule_ids=sorted({f.rule.id for f in sources}),
            citations=_unique([cite(f.rule.rule) for f in sources]),
            emphasis=sorted(set(emphasis.get(code, []))),
            tailoring=sorted({reason for _, reason in variants}),
        ))
    rs = ruleset.file
    return Assessment(
        ruleset=RulesetIdentity(id=rs.id, version=rs.version, sha256=ruleset.sha256,
                                title=rs.title, url=rs.canonical_url, developer=rs.developer,
                                release_date=rs.release_date.isoformat()
                                if rs.release_date else None),
        as_of=facts.as_of,
        engine=engine,
        patient=facts.patient,
        flags=sorted(flags.values(), key=lambda f: (-SEVERITY_RANK[f.severity], f.code)),
        referrals=sorted(referrals.values(),
                         key=lambda r: (r.urgency != "urgent", r.code)),
        plan=plan,
        suppressed=sorted(removed.values(), key=lambda s: catalogue[s.code][0]),
        data_requests=sorted(requests.values(), key=lambda d: d.analyte),
        trace=trace,
        data_quality=list(facts.data_quality),
        skipped_resources=dict(facts.skipped),
        incomplete=bool(facts.left_out),
        left_out=list(facts.left_out),
    )


def _by_order(orders: list[Evidence]) -> list[Evidence]:
    """Order evidence by the draft order's reference, then its concept."""
    return sorted(orders, key=lambda ev: (ev.sources, str(ev.values.get("concept"))))


def _unique(items: list[Any]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out
