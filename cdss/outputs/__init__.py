"""Renderings of an Assessment, and nothing else: readable text
(:mod:`cdss.outputs.text`), a FHIR R4 Bundle (:mod:`cdss.outputs.fhir`) and
CDS Hooks cards (:mod:`cdss.outputs.cds_hooks`). Each reads only the
Assessment it is given; none evaluates or loads a ruleset.
"""

from __future__ import annotations

from cdss.outputs.cds_hooks import cards
from cdss.outputs.fhir import to_fhir_bundle, validate_bundle
from cdss.outputs.text import render_text

__all__ = ["cards", "render_text", "to_fhir_bundle", "validate_bundle"]
