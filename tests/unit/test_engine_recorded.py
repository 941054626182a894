"""Every output says which engine ran: the Assessment, text, FHIR and cards."""

from __future__ import annotations

import pytest

import cdss
from cdss.outputs.cds_hooks import CARD_EXTENSION, cards
from cdss.outputs.fhir import to_fhir_bundle
from cdss.outputs.text import render_text
from tests.support.builders import finding, lab, patient

RECORD = [patient(), lab("k", "2823-3", 3.2, "mmol/L", when="2026-02-01"),
          finding("c", "leg-cramps", when="2026-02-01")]


@pytest.mark.parametrize("engine", ["rete", "reference"])
def test_each_output_names_the_engine(engine: str) -> None:
    a = cdss.evaluate(RECORD, ruleset="plantar-cramps", as_of="2026-03-01", engine=engine)
    assert a.engine == engine
    assert f"{engine} engine" in render_text(a)
    bundle = to_fhir_bundle(a)
    params = next(e["resource"] for e in bundle["entry"]
                  if e["resource"]["resourceType"] == "Parameters")
    assert {"name": "engine", "valueString": engine} in params["parameter"]
    provenance = next(e["resource"] for e in bundle["entry"]
                      if e["resource"]["resourceType"] == "Provenance")
    assert f"{engine} engine" in provenance["agent"][0]["who"]["display"]
    shown = cards(a)
    assert shown
    for card in shown:
        assert card["extension"][CARD_EXTENSION]["engine"] == engine
        assert card["extension"][CARD_EXTENSION]["sha256"] == a.ruleset.sha256


def test_the_card_uuids_do_not_depend_on_the_engine() -> None:
    rete, reference = (cdss.evaluate(RECORD, ruleset="plantar-cramps", as_of="2026-03-01",
                                     engine=e) for e in ("rete", "reference"))
    assert [c["uuid"] for c in cards(rete, hook_instance="h")] == \
        [c["uuid"] for c in cards(reference, hook_instance="h")]
