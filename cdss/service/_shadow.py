"""What the service does after an answer has been sent: it notes the cards
issued (uuid → kind and rules, for feedback) in the store, and, for a service
with a shadow candidate, queues the candidate's evaluation of the same call.

A shadow evaluation runs on the evaluation thread only when no call's
evaluation is waiting (a call waits at most for one shadow evaluation
already running), from a bounded queue: when it is full, the call's shadow
evaluation is dropped and counted. It evaluates the active and the candidate
version on the same data at the same evaluation time, and compares what a
clinician would see (:func:`cdss._changes.rule_changes`, and the cards gained
or lost), each change tied to its rules. A difference is written to the store
and logged, one line per differing call, without patient data: ruleset codes
and rule ids only, and (store only) a salted hash of the patient id, so that
distinct patients can be counted. The salt is drawn at each start and never
written anywhere: the store alone cannot tell whether a given patient
differed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from cdss._changes import rule_changes
from cdss.assessment import Assessment
from cdss.errors import HookRequestError
from cdss.hooks import HOOK, HookRequest, assess_request
from cdss.outputs.cds_hooks import CARD_EXTENSION, cards
from cdss.rulesets import Ruleset
from cdss.service._logging import emit, log_failure
from cdss.service._runtime import Worker
from cdss.service._store import IssuedCard, ShadowCall, Store

__all__ = ["AfterAnswer", "card_changes", "issued_cards", "load_candidates", "unmapped_codes"]

#: Seconds between log lines about shadow evaluations dropped (queue full).
_DROP_LOG_EVERY = 10.0


def issued_cards(body: Mapping[str, Any]) -> list[IssuedCard]:
    """The cards of an answer as the store keeps them, from their provenance extension."""
    out = []
    for card in body.get("cards", ()):
        ext = card.get("extension", {}).get(CARD_EXTENSION, {})
        out.append(IssuedCard(card["uuid"], ext.get("kind", "unknown"),
                              tuple(ext.get("rules", ()))))
    return out


def unmapped_codes(assessment: Assessment | None) -> list[tuple[str, str]]:
    """The codes (system, code) no concept mapped in the data behind an
    answer, from its Assessment's data-quality notes (none without one)."""
    if assessment is None:
        return []
    out = []
    for note in assessment.data_quality:
        if note.code == "unmapped-code" and note.coding:
            system, _, code = note.coding.rpartition("|")
            out.append((system, code))
    return out


def _card_key(card: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    """A card's kind and topic (``flag:<code>``, or ``plan``: one per answer),
    and its rules."""
    ext = card.get("extension", {}).get(CARD_EXTENSION, {})
    kind = ext.get("kind", "unknown")
    topic = card.get("source", {}).get("topic", {}).get("code")
    return f"{kind}:{topic}" if topic else kind, tuple(ext.get("rules", ()))


def card_changes(before: Sequence[Mapping[str, Any]],
                 after: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """The cards gained and lost from ``before`` to ``after``, as
    :func:`~cdss._changes.rule_changes` gives changes (``item`` ``card``,
    ``code`` the kind and topic code), a card being the same when its kind
    and topic are (what changed inside it is in the items' changes); each is
    tied to the rules of its card, a card of no rule to rule ``""``."""
    out: list[dict[str, str]] = []
    old = [_card_key(c) for c in before]
    new = [_card_key(c) for c in after]
    for cards_, others, change in ((new, old, "gained"), (old, new, "lost")):
        left = Counter(code for code, _ in others)
        for code, rules in cards_:
            if left[code]:
                left[code] -= 1
                continue
            out.extend({"rule": rule, "item": "card", "code": code, "change": change}
                       for rule in rules or ("",))
    return sorted(out, key=lambda c: (c["rule"], c["item"], c["code"], c["change"]))


class AfterAnswer:
    """The work done after each answer: cards noted in ``store`` (if any),
    and the shadow evaluation of services with a candidate."""

    def __init__(self, candidates: Mapping[str, Ruleset], store: Store | None, *,
                 timezone_name: str, intake: str) -> None:
        self.candidates = dict(candidates)
        self.store = store
        self.timezone_name = timezone_name
        self.intake = intake
        self.run = secrets.token_hex(8)
        self._salt = secrets.token_bytes(32)
        self.counts: Counter[str] = Counter()
        self._dropped_unlogged = 0
        self._last_drop_log = 0.0
        #: Told of the cards of every answer (metrics), and of every shadow job dropped.
        self.on_cards: Callable[[str, list[IssuedCard]], None] | None = None
        self.on_drop: Callable[[str], None] | None = None

    def as_of(self, service: str, clock_time: datetime | None) -> datetime | None:
        """The evaluation time of a call: a service with a candidate fixes it
        (now) so that both versions are evaluated at the same time."""
        if clock_time is None and service in self.candidates:
            return datetime.now(timezone.utc)
        return clock_time

    def __call__(self, service: str, active: Ruleset, req: HookRequest,
                 fetched: dict[str, Any], as_of: datetime | None, body: Mapping[str, Any],
                 worker: Worker, hook: str = HOOK, served: Assessment | None = None, *,
                 version: str = "2.0") -> None:
        """After the answer ``body`` to a call of ``hook`` was sent: note its
        cards, queue the shadow (``served``: the Assessment behind ``body``,
        else the active version is evaluated again)."""
        try:
            issued = issued_cards(body)
            if self.on_cards is not None:
                self.on_cards(service, issued)
            if self.store is not None:
                self.store.record_cards(service, active.spec, active.sha256, issued)
                self.store.record_call(service, active.spec, active.sha256,
                                       [rule for card in issued for rule in card.rules],
                                       unmapped_codes(served))
            candidate = self.candidates.get(service)
            if candidate is None:
                return

            def job() -> None:
                self._shadow(service, active, candidate, req, fetched, as_of, body, hook, served,
                             version)

            if worker.offer(job):
                self.counts["queued"] += 1
            else:
                self._dropped(service, active, candidate)
        except Exception as exc:  # the answer has gone: nothing may fail after it
            log_failure(exc, "after answer")

    def _dropped(self, service: str, active: Ruleset, candidate: Ruleset) -> None:
        self.counts["dropped"] += 1
        self._dropped_unlogged += 1
        if self.on_drop is not None:
            self.on_drop(service)
        if self.store is not None:
            self.store.record_shadow(self._call(service, active, candidate, dropped=1))
        now = time.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_EVERY:
            self._last_drop_log = now
            emit(logging.WARNING, {"event": "shadow queue full", "service": service,
                                    "dropped": self._dropped_unlogged,
                                    "dropped_total": self.counts["dropped"]})
            self._dropped_unlogged = 0

    def _call(self, service: str, active: Ruleset, candidate: Ruleset,
              **fields: Any) -> ShadowCall:
        return ShadowCall(service, active.spec, active.sha256, candidate.spec, candidate.sha256,
                          datetime.now(timezone.utc), self.run, **fields)

    def _patient(self, patient_id: str) -> str:
        return hmac.new(self._salt, patient_id.encode(), hashlib.sha256).hexdigest()[:16]

    def _shadow(self, service: str, active: Ruleset, candidate: Ruleset, req: HookRequest,
                fetched: dict[str, Any], as_of: datetime | None,
                body: Mapping[str, Any], hook: str, served: Assessment | None,
                version: str = "2.0") -> None:
        """In the evaluation thread: evaluate the candidate (and the active
        version, unless its Assessment is ``served``), compare, record."""
        try:
            try:
                before = served if served is not None else assess_request(
                    req, active, fetched=fetched, as_of=as_of, timezone=self.timezone_name,
                    mode=self.intake, hook=hook, version=version)
                after = assess_request(req, candidate, fetched=fetched, as_of=as_of,
                                       timezone=self.timezone_name, mode=self.intake,
                                       hook=hook, version=version)
            except HookRequestError:  # the candidate refuses data the active version took
                self.counts["failed"] += 1
                emit(logging.WARNING, {"event": "shadow failed", "service": service,
                                        "active": active.spec, "candidate": candidate.spec,
                                        "error": "refused"})
                if self.store is not None:
                    self.store.record_shadow(self._call(service, active, candidate, failed=True))
                return
            shown = cards(after, candidate, hook_instance=req.hookInstance,
                          only_orders=hook != HOOK, version=version)
            changes = [*rule_changes(before, after), *card_changes(body["cards"], shown)]
            self.counts["evaluated"] += 1
            call = self._call(service, active, candidate, changes=tuple(changes),
                              patient=self._patient(req.context.patientId) if changes else None)
            if changes:
                self.counts["differing"] += 1
                emit(logging.INFO, {
                    "event": "shadow difference", "service": service, "active": active.spec,
                    "candidate": candidate.spec, "rules": sorted({c["rule"] for c in changes}),
                    "changes": changes})
            if self.store is not None:
                self.store.record_shadow(call)
        except BaseException as exc:
            self.counts["failed"] += 1
            log_failure(exc, "shadow evaluation")
            if self.store is not None:
                self.store.record_shadow(self._call(service, active, candidate, failed=True))

    def summary(self) -> dict[str, int]:
        """The counts since start: queued, evaluated, differing, failed, dropped."""
        return {k: self.counts[k] for k in ("queued", "evaluated", "differing", "failed",
                                             "dropped")}


def load_candidates(services: Mapping[str, tuple[str, Ruleset]],
                    shadow: Mapping[str, str | Ruleset], load: Any) -> dict[str, Ruleset]:
    """The candidate ruleset of each service named in ``shadow`` (``load(spec)``
    loads one; ``services``: service id → (hook, active ruleset), every hook's
    services included), checked at start: the service exists and the candidate is not
    the active version. Both are evaluated on the data the active version's
    prefetch brings; a candidate whose prefetch would ask for more (codes a
    new version added) is logged at start, as it may miss some of its findings."""
    from cdss.errors import ServiceConfigError
    from cdss.hooks import prefetch_templates

    out = {}
    for sid, spec in shadow.items():
        where = f"shadow.{sid}"
        if sid not in services:
            raise ServiceConfigError(f"no service {sid!r} to shadow (services: "
                                     f"{', '.join(sorted(services))})", field=where)
        candidate = spec if isinstance(spec, Ruleset) else load(spec)
        hook, active = services[sid]
        if candidate.key == active.key:
            raise ServiceConfigError(f"the candidate {candidate.spec} is the active version",
                                     field=where)
        wider = sorted(key for key, query in prefetch_templates(candidate, hook).items()
                       if prefetch_templates(active, hook).get(key) != query)
        if wider:  # it sees only what the active version's prefetch brings
            emit(logging.WARNING, {"event": "shadow candidate reads more", "service": sid,
                                    "active": active.spec, "candidate": candidate.spec,
                                    "prefetch": wider})
        out[sid] = candidate
    return out
