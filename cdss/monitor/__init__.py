"""Per-rule monitoring: know when a rule silently stops working.

:func:`monitor_store` reads the service's store (firing rates per call,
feedback, unmapped codes, ruleset versions) and :func:`monitor_screens`
successive cohort screens; each gives a report whose ``alarms`` name the
rule, the period, the size of the change and its likely cause.
:func:`render_page` draws a report as one self-contained HTML page. The
statistics are plain Python (no numpy or scipy); see docs/monitoring.md.
"""

from __future__ import annotations

from cdss import _exports
from cdss.monitor._page import render_page
from cdss.monitor._screens import monitor_screens
from cdss.monitor._service import ALARM_KINDS, MonitorSettings, monitor_store
from cdss.monitor._simulate import DayCounts, Fault, simulate, write_store

__all__ = ["ALARM_KINDS", "DayCounts", "Fault", "MonitorSettings", "monitor_screens",
           "monitor_store", "render_page", "simulate", "write_store"]

_exports.claim(globals())
