"""The service's metrics, in Prometheus format (prometheus-client), served at
``GET /metrics`` to a scraper that presents the metrics bearer token.

Names follow Prometheus conventions (``cdss_`` prefix, base units, ``_total``
counters, ``_seconds`` histograms). Every label is a bounded set: service ids
(configured, or ``unknown``), hooks, rule ids of the served rulesets, status
codes, refusal reasons with their numbers masked, store operations; never a
patient, token, card or resource identifier.

With several worker processes (``cdss serve --workers N``) the supervisor
gives every worker one ``PROMETHEUS_MULTIPROC_DIR`` (a fresh folder) before
the worker imports prometheus-client; each worker writes its values there and
any of them answers a scrape with the sum over all (live and dead workers'
counters alike, as Prometheus expects of counters).
"""

from __future__ import annotations

import os
import re
from typing import Any

__all__ = ["MULTIPROC_ENV", "Metrics"]

#: The folder prometheus-client shares values through, between processes.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Latency buckets (seconds): a CDS Hooks answer is expected in tens of ms.
_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0)
_DIGITS = re.compile(r"\d+")


def reason_label(reason: str) -> str:
    """A refusal reason as a label: numbers masked, so the set stays bounded."""
    return _DIGITS.sub("N", reason)[:80]


class Metrics:
    """The service's counters and histograms, on a registry of their own
    (several apps in one process, as in tests, do not mix)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.calls = Counter(
            "cdss_calls_total", "Calls answered, by service, hook (or endpoint) and status.",
            ["service", "hook", "status"], registry=r)
        self.latency = Histogram(
            "cdss_call_duration_seconds", "Time to answer a call, by service and hook.",
            ["service", "hook"], buckets=_BUCKETS, registry=r)
        self.auth_failures = Counter(
            "cdss_auth_failures_total", "Calls refused for their token, by reason.",
            ["reason"], registry=r)
        self.cards = Counter(
            "cdss_cards_issued_total", "Cards returned, by service and rule (a card counts "
            "once for each rule behind it; '' for a card of no rule).",
            ["service", "rule"], registry=r)
        self.feedback = Counter(
            "cdss_feedback_total", "Feedback entries stored, by service, rule ('unknown' "
            "for a card the store does not know) and outcome.",
            ["service", "rule", "outcome"], registry=r)
        self.shadow_dropped = Counter(
            "cdss_shadow_jobs_dropped_total", "Shadow evaluations dropped (queue full).",
            ["service"], registry=r)
        self.store_errors = Counter(
            "cdss_store_errors_total", "Store operations that failed (write, replay, ping, "
            "prune).", ["operation"], registry=r)
        self.store_dropped = Counter(
            "cdss_store_writes_dropped_total", "Store rows dropped because the writer's "
            "queue was full, by kind.", ["kind"], registry=r)
        self.ready = Gauge(
            "cdss_ready", "1 while the process answers ready at /readyz.", registry=r,
            multiprocess_mode="livesum")

    def exposition(self) -> tuple[bytes, str]:
        """The metrics as Prometheus text, and its content type (every
        worker's, summed, in multi-process mode)."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        registry: Any = self.registry
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST


def mark_dead(pid: int) -> None:
    """Forget a dead worker's live gauges (its counters stay in the sums)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
