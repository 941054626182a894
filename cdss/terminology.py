"""Terminology: codes as EHRs send them, mapped to a ruleset's concepts.

The value sets are data in the ruleset's folder. A code may map to more than
one concept (a neuropathy due to type 2 diabetes is both a neuropathy and
diabetes). ICD-10-CM and ATC entries may be category prefixes. A site adds its
own codes with a concept-map file; rules never see codes, only concepts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the file formats are types here, so terminology does not load rulesets
    from cdss.rulesets import Code, ConceptMapEntry, ValueSetFile

__all__ = ["ICD10CM", "LOCAL", "LOINC", "RXNORM", "SNOMED", "UCUM", "Terminology",
           "coding_displays", "codings"]

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
#: cdss's own code system for findings that have no confirmed standard code.
LOCAL = "https://cdss.dev/fhir/CodeSystem/findings"
_DOTLESS = frozenset({ICD10CM, "http://www.whocc.no/atc"})
_MEMO_LIMIT = 65536


def _norm(system: str, code: str) -> str:
    code = code.strip()
    if system in _DOTLESS:
        return code.replace(".", "").upper()
    return code


class Terminology:
    """Maps codings to concept names, from a ruleset's value sets and any
    site concept maps."""

    def __init__(self, valuesets: ValueSetFile, maps: Sequence[ConceptMapEntry] = ()) -> None:
        self.valuesets = valuesets
        self._exact: dict[tuple[str, str], set[str]] = {}
        self._prefix: list[tuple[str, str, str]] = []
        # (system, code, concept) -> the code entry, for what the code itself states
        self._entries: dict[tuple[str, str, str], Code] = {}
        for name, concept in valuesets.concepts.items():
            for code in concept.codes:
                system = valuesets.systems.get(code.system, code.system)
                key = _norm(system, code.code)
                if code.laterality or code.site or code.nocturnal is not None:
                    self._entries[(system, key, name)] = code
                if code.prefix:
                    self._prefix.append((system, key, name))
                else:
                    self._exact.setdefault((system, key), set()).add(name)
        self._sides: dict[tuple[str, str], str] = {}
        for code in valuesets.qualifiers:
            if code.laterality:
                system = valuesets.systems.get(code.system, code.system)
                self._sides[(system, _norm(system, code.code))] = code.laterality
        for entry in maps:
            system = valuesets.systems.get(entry.system, entry.system)
            self._exact.setdefault((system, _norm(system, entry.code)), set()).add(entry.concept)
        self._prefix.sort(key=lambda p: (p[0], p[1], p[2]))
        self._prefix_by_system: dict[str, list[tuple[str, str]]] = {}
        for psystem, prefix, name in self._prefix:
            self._prefix_by_system.setdefault(psystem, []).append((prefix, name))
        # (system, code) -> concepts: codes repeat across a record's resources
        self._memo: dict[tuple[str, str], frozenset[str]] = {}
        # text -> the medication concepts its words name: texts repeat too
        self._named: dict[str, frozenset[str]] = {}

    def kind(self, concept: str) -> str | None:
        found = self.valuesets.concepts.get(concept)
        return found.kind if found else None

    def concepts_of_coding(self, system: str, code: str) -> set[str]:
        memo = self._memo.get((system, code))
        return set(memo if memo is not None else self._lookup(system, code))

    def _lookup(self, system: str, code: str) -> frozenset[str]:
        """The concepts of one coding, remembered."""
        key = _norm(system, code)
        found = set(self._exact.get((system, key), ()))
        for prefix, name in self._prefix_by_system.get(system, ()):
            if key.startswith(prefix):
                found.add(name)
        if len(self._memo) >= _MEMO_LIMIT:  # bounded, whatever codes a feed sends
            self._memo.clear()
        memo = self._memo[(system, code)] = frozenset(found)
        return memo

    def concepts_of(self, codeable: Any) -> set[str]:
        """Concepts of a CodeableConcept (dict) or a list of them."""
        if type(codeable) is dict:  # as JSON parses: one look at each coding
            coding_list = codeable.get("coding")
            if coding_list is None:
                return set()
            if type(coding_list) is list:
                found: set[str] = set()
                memo = self._memo
                for coding in coding_list:
                    if type(coding) is not dict:
                        if isinstance(coding, Mapping):
                            return self._concepts_of(codeable)
                        continue
                    system, code = coding.get("system"), coding.get("code")
                    if type(system) is str and type(code) is str:
                        concepts = memo.get((system, code))
                        if concepts is None:
                            concepts = self._lookup(system, code)
                        if concepts:
                            found |= concepts
                    elif isinstance(system, str) and isinstance(code, str):
                        return self._concepts_of(codeable)
                return found
        return self._concepts_of(codeable)

    def _concepts_of(self, codeable: Any) -> set[str]:
        found: set[str] = set()
        for system, code in codings(codeable):
            found |= self.concepts_of_coding(system, code)
        return found

    def statements(self, codeable: Any, concept: str) -> tuple[set[str], str | None,
                                                                bool | None]:
        """What the codes of ``codeable`` that map to ``concept`` state
        themselves: their sides (``left``, ``right``, ``bilateral``), the body
        site they imply (the first in code order) and whether the finding is
        nocturnal (``None`` where no code says)."""
        sides: set[str] = set()
        site: str | None = None
        nocturnal: bool | None = None
        for system, code in codings(codeable):
            key = _norm(system, code)
            entries = [self._entries.get((system, key, concept))]
            entries += [self._entries.get((ps, prefix, concept)) for ps, prefix, name
                        in self._prefix if name == concept and ps == system
                        and key.startswith(prefix)]
            for entry in entries:
                if entry is None:
                    continue
                if entry.laterality:
                    sides.add(entry.laterality)
                if entry.site and site is None:
                    site = entry.site
                if entry.nocturnal is not None and nocturnal is None:
                    nocturnal = entry.nocturnal
        return sides, site, nocturnal

    def sides_of(self, codeable: Any) -> set[str]:
        """The sides a bodySite states: body-site qualifier codes (right, left,
        both) and body-site codes with a laterality."""
        sides: set[str] = set()
        for system, code in codings(codeable):
            key = _norm(system, code)
            if (system, key) in self._sides:
                sides.add(self._sides[(system, key)])
            for concept in self._exact.get((system, key), ()):
                entry = self._entries.get((system, key, concept))
                if entry is not None and entry.laterality and self.kind(concept) == "body_site":
                    sides.add(entry.laterality)
        return sides

    def medications_named_in(self, text: str) -> set[str]:
        """Medication concepts whose ingredient names appear as words in
        ``text`` (a coding display or CodeableConcept text): the fallback for
        clinical-drug codes that are not in the value sets."""
        memo = self._named.get(text)
        if memo is None:
            if len(self._named) >= _MEMO_LIMIT:
                self._named.clear()
            memo = self._named[text] = frozenset(self._medications_named_in(text))
        return set(memo)

    def _medications_named_in(self, text: str) -> set[str]:
        words = set(re.findall(r"[a-z]+", text.lower()))
        found = set()
        for name, concept in self.valuesets.concepts.items():
            if concept.kind != "medication":
                continue
            for ingredient in concept.ingredients:
                parts = ingredient.lower().split()
                if parts and all(p in words for p in parts):
                    found.add(name)
        return found

    def codes_of(self, concept: str, system: str) -> list[str]:
        """The codes of a concept in one system, in file order (for data requests)."""
        found = self.valuesets.concepts.get(concept)
        if found is None:
            return []
        return [
            c.code
            for c in found.codes
            if self.valuesets.systems.get(c.system, c.system) == system and not c.prefix
        ]


def codings(codeable: Any) -> Iterable[tuple[str, str]]:
    """(system, code) of every well-formed coding of a CodeableConcept (dict)
    or a list of them."""
    for coding in _coding_dicts(codeable):
        system, code = coding.get("system"), coding.get("code")
        if isinstance(system, str) and isinstance(code, str):
            yield system, code


def coding_displays(*codeables: Any) -> Iterable[tuple[tuple[str, str], str]]:
    """((system, code), display) of every well-formed coding that has a
    non-blank display, in the CodeableConcepts (dicts) or lists of them."""
    for codeable in codeables:
        for coding in _coding_dicts(codeable):
            system, code, display = coding.get("system"), coding.get("code"), coding.get("display")
            if (isinstance(system, str) and isinstance(code, str)
                    and isinstance(display, str) and display.strip()):
                yield (system, code), display.strip()


def _coding_dicts(codeable: Any) -> Iterable[Mapping[str, Any]]:
    for cc in _as_list(codeable):
        if isinstance(cc, Mapping):
            yield from (c for c in _as_list(cc.get("coding")) if isinstance(c, Mapping))


def _as_list(value: Any) -> Iterable[Any]:
    if value is None:
        return ()
    if isinstance(value, list):
        return value
    return (value,)
