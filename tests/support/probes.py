"""Evaluators that cohort tests hand to ``screen(evaluator=...)``.

They run inside the screen's worker processes, which import them by name
(``tests.support.probes``): pytest puts the repository root on ``sys.path``
(the folder above the ``tests`` package), and ``spawn`` passes ``sys.path`` on
to the processes it starts. Each is called as
:func:`cdss.evaluate` is, with one patient's record as Bundle JSON bytes.
"""

from __future__ import annotations

import os
import resource
import signal
import threading
from pathlib import Path
from typing import Any

import orjson

import cdss

#: Patients evaluated so far by this process.
_EVALUATED = 0


def patient_id(record: bytes) -> str:
    """The id of the record's Patient ("" when it has none)."""
    for entry in orjson.loads(record).get("entry", []):
        res = entry.get("resource", {})
        if res.get("resourceType") == "Patient":
            return str(res.get("id"))
    return ""


def _die(how: str, code: int) -> None:
    if how == "segv":
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file
        os.kill(os.getpid(), signal.SIGSEGV)
    os._exit(code)


def evaluate_or_die(record: bytes, **kwargs: Any) -> Any:
    """:func:`cdss.evaluate`, except that the worker process dies on some
    patients, by the prefix of their id:

    - ``segv-``: killed by SIGSEGV (as a crash in durable-rules' C code);
    - ``exit-``: ``os._exit(3)``;
    - ``late-``: ``os._exit(4)``, but only when this process evaluated
      another patient before (so not when the patient is evaluated alone);
    - ``once-``: ``os._exit(5)`` the first time only (a marker file in
      ``$CDSS_PROBE_DIR``), as a worker killed by something else would.
    """
    global _EVALUATED
    pid = patient_id(record)
    if pid.startswith("segv-"):
        _die("segv", 0)
    if pid.startswith("exit-"):
        _die("exit", 3)
    if pid.startswith("late-") and _EVALUATED:
        _die("exit", 4)
    if pid.startswith("once-"):
        marker = Path(os.environ["CDSS_PROBE_DIR"]) / f"died-{pid}"
        if not marker.exists():
            marker.touch()
            _die("exit", 5)
    _EVALUATED += 1
    return cdss.evaluate(record, **kwargs)


class ProbeReport(Exception):
    """What a probe saw, reported as the patient's error row."""


def report_timer_threads(record: bytes, **kwargs: Any) -> Any:
    """Evaluate the patient, then report (as the error row's reason, JSON)
    this process's id and the names of the ``threading.Timer`` threads alive
    in it (durable-rules' ``Host`` starts such threads to dispatch its
    rulesets)."""
    cdss.evaluate(record, **kwargs)
    timers = sorted(t.name for t in threading.enumerate() if isinstance(t, threading.Timer))
    raise ProbeReport(orjson.dumps({"pid": os.getpid(), "timers": timers}).decode())
