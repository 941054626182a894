"""A loaded ruleset version and its identity.

Its identity is ``id@version`` plus the sha256 of its canonical content: the
ruleset file, its merged value sets and any site concept maps, as JSON with
sorted keys. Fields added to the file formats after versions were pinned are
left out of that JSON while unset, so a pinned version's hash never changes.

The hash identifies what decides a version's answers. ``policies`` decides
none: it declares what the testing kit checks the answers against (a red flag's
severity excludes a plan category), so it is left out, and a pinned version can
declare the policy it has always kept without changing its identity.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import orjson

from cdss.rulesets._compiled import CompiledRule
from cdss.rulesets._schema import ConceptMapFile, RulesetFile, ValueSetFile
from cdss.terminology import LOINC, Terminology

__all__ = ["Ruleset", "content_hash"]

#: Fields added to the file formats after rulesets were first pinned: left out
#: of the content hash while unset, so that older files keep their hashes.
_LATER_FIELDS = frozenset({"exists", "laterality", "site", "nocturnal", "extends",
                           "bilateral", "qualifiers", "override_reasons", "order_suggestion",
                           "developer", "release_date", "boundary_rounding",
                           "population"})
#: Fields of a ruleset file that decide no answer: left out of the content hash.
_CHECKED_ONLY = frozenset({"policies"})


@dataclass(frozen=True)
class Ruleset:
    """A loaded, validated and compiled ruleset version."""

    file: RulesetFile
    valuesets: ValueSetFile
    concept_maps: tuple[ConceptMapFile, ...]
    path: Path
    sha256: str
    rules: tuple[CompiledRule, ...]
    strata: tuple[tuple[CompiledRule, ...], ...] = field(repr=False)

    @property
    def id(self) -> str:
        return self.file.id

    @property
    def version(self) -> str:
        return self.file.version

    @property
    def spec(self) -> str:
        """``id@version``."""
        return f"{self.file.id}@{self.file.version}"

    @property
    def key(self) -> str:
        """``id@version#sha256-prefix``: unique per content, used to register engines."""
        return f"{self.spec}#{self.sha256[:16]}"

    @cached_property
    def terminology(self) -> Terminology:
        """Codings → concepts, from the value sets and the site concept maps."""
        maps = [entry for cmap in self.concept_maps for entry in cmap.maps]
        return Terminology(self.valuesets, maps)

    @cached_property
    def derived_facts(self) -> frozenset[str]:
        """The names of the facts the rules derive."""
        return frozenset(a.derive for r in self.file.rules for a in r.then if a.derive)

    @cached_property
    def boundaries(self) -> dict[str, tuple[float, ...]]:
        """Per analyte, the numbers rules compare its ``value`` with, when the
        file reads values charted at a threshold's equivalent as the threshold
        (``boundary_rounding: charted``); else empty."""
        if self.file.boundary_rounding != "charted":
            return {}
        found: dict[str, set[float]] = {}
        for rule in self.rules:
            for pattern in (*rule.all, *rule.any, *rule.none):
                for test in pattern.tests:
                    if test.field == "value" and test.op in ("lt", "le", "gt", "ge", "eq") \
                            and isinstance(test.value, (int, float)) \
                            and not isinstance(test.value, bool):
                        found.setdefault(pattern.fact, set()).add(float(test.value))
        return {name: tuple(sorted(values)) for name, values in sorted(found.items())}

    @cached_property
    def min_age(self) -> tuple[float, str] | None:
        """The youngest age (years) of the ruleset's population, and the
        population in words, or None."""
        population = self.file.population
        if population is None or population.min_age is None:
            return None
        return self.threshold(population.min_age), population.description

    def threshold(self, name: str) -> float:
        """The value of the named threshold."""
        return self.file.thresholds[name].value

    def order_loinc(self, analyte: str) -> str | None:
        """The LOINC code to order for ``analyte``: its ``order_loinc``, else its
        first LOINC code, else None."""
        spec = self.valuesets.analytes.get(analyte)
        if spec is not None and spec.order_loinc:
            return spec.order_loinc
        codes = self.terminology.codes_of(analyte, LOINC)
        return codes[0] if codes else None

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ruleset) and other.key == self.key


def content_hash(rfile: RulesetFile, valuesets: ValueSetFile,
                 maps: Sequence[ConceptMapFile]) -> str:
    """The sha256 of the canonical JSON of a ruleset's files (``policies``
    left out: it decides no answer)."""
    content = _without_unset_later_fields({
        "ruleset": rfile.model_dump(mode="json", by_alias=True, exclude=set(_CHECKED_ONLY)),
        "valuesets": valuesets.model_dump(mode="json", by_alias=True),
        "concept_maps": [m.model_dump(mode="json") for m in maps],
    })
    return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _without_unset_later_fields(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_unset_later_fields(v) for k, v in node.items()
                if not (k in _LATER_FIELDS and v in (None, {}, []))}
    if isinstance(node, list):
        return [_without_unset_later_fields(v) for v in node]
    return node
