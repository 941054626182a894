"""One ruleset version from its files: read, merged, checked, compiled, identified.

A ruleset version lives in ``<folder>/<id>/<version>.yaml`` next to the
value-set files it names, which are merged (a later file may ``extend`` a
concept of an earlier one); site concept maps add a site's codes. The parts
are read safely (:mod:`._reading`), checked (:mod:`._checks`), compiled into
strata (:mod:`._compiled`) and identified by their content hash
(:mod:`._ruleset`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cdss.errors import RulesetError
from cdss.rulesets._checks import check_ruleset_file
from cdss.rulesets._compiled import compile_rules, strata
from cdss.rulesets._reading import read_model, suggest
from cdss.rulesets._ruleset import Ruleset, content_hash
from cdss.rulesets._schema import ConceptMapFile, RulesetFile, ValueSetFile

__all__ = ["load_ruleset_file"]


def load_ruleset_file(path: str | Path, *, concept_maps: Sequence[str | Path] = ()) -> Ruleset:
    """Load one ruleset version file (and the value-set files it names)."""
    path = Path(path)
    rfile = read_model(path, RulesetFile)
    if path.stem != rfile.version:
        raise RulesetError(f"file name says {path.stem} but version is {rfile.version}",
                           path=str(path), field="version")
    parts = []
    for name in rfile.valuesets:
        vpath = (path.parent / name).resolve()
        if path.parent.resolve() not in vpath.parents:
            raise RulesetError("value-set files must sit in the ruleset's folder",
                               path=str(path), field="valuesets")
        parts.append((vpath, read_model(vpath, ValueSetFile)))
    valuesets = _merge_valuesets(parts, path)
    maps = [_read_concept_map(Path(mpath), rfile, valuesets) for mpath in concept_maps]
    check_ruleset_file(rfile, valuesets, path)
    compiled = compile_rules(rfile, valuesets, path)
    return Ruleset(
        file=rfile, valuesets=valuesets, concept_maps=tuple(maps), path=path,
        sha256=content_hash(rfile, valuesets, maps), rules=tuple(compiled),
        strata=strata(compiled),
    )


def _read_concept_map(path: Path, rfile: RulesetFile, valuesets: ValueSetFile) -> ConceptMapFile:
    cmap = read_model(path, ConceptMapFile)
    if cmap.ruleset != rfile.id:
        raise RulesetError(f"concept map is for {cmap.ruleset!r}, not {rfile.id!r}",
                           path=str(path), field="ruleset")
    for i, entry in enumerate(cmap.maps):
        if entry.concept not in valuesets.concepts:
            raise RulesetError(f"unknown concept {entry.concept!r}", path=str(path),
                               field=f"maps.{i}.concept",
                               suggestion=suggest(entry.concept, valuesets.concepts))
    return cmap


def _merge_valuesets(parts: Sequence[tuple[Path, ValueSetFile]], path: Path) -> ValueSetFile:
    systems: dict[str, Any] = {}
    concepts: dict[str, Any] = {}
    analytes: dict[str, Any] = {}
    bilateral: dict[str, Any] = {}
    qualifiers: list[Any] = []
    extensions: list[tuple[Path, str, Any]] = []
    for part_path, part in parts:
        for target, items in ((systems, part.systems), (concepts, part.concepts),
                              (analytes, part.analytes), (bilateral, part.bilateral)):
            for key, value in items.items():
                if key in target and target[key] != value:
                    raise RulesetError(f"{key!r} is defined differently in two value-set files",
                                       path=str(part_path), field=key)
                target[key] = value
        qualifiers += part.qualifiers
        extensions += [(part_path, name, ext) for name, ext in part.extends.items()]
    for part_path, name, ext in extensions:  # after every file: order does not matter
        if name not in concepts:
            raise RulesetError(f"extends {name!r}, which no value-set file defines",
                               path=str(part_path), field=f"extends.{name}",
                               suggestion=suggest(name, concepts))
        concept = concepts[name]
        update: dict[str, Any] = {"codes": [*concept.codes, *ext.codes]}
        if ext.ingredients:
            update["ingredients"] = [*concept.ingredients,
                                     *(i for i in ext.ingredients if i not in concept.ingredients)]
        concepts[name] = concept.model_copy(update=update)
    for name, spec in bilateral.items():
        for from_concept in [name, *spec.from_]:
            if from_concept not in concepts:
                raise RulesetError(f"bilateral {name!r} names {from_concept!r}, which no value-set "
                                   "file defines", path=str(path), field=f"bilateral.{name}",
                                   suggestion=suggest(from_concept, concepts))
        if concepts[name].kind != "finding":
            raise RulesetError(f"bilateral {name!r} must be a finding concept",
                               path=str(path), field=f"bilateral.{name}")
    for concept_name, concept in concepts.items():
        for code in concept.codes:
            if code.site is not None and (code.site not in concepts
                                          or concepts[code.site].kind != "body_site"):
                raise RulesetError(f"code {code.code} of {concept_name!r} implies site "
                                   f"{code.site!r}, which is not a body_site concept",
                                   path=str(path), field=f"concepts.{concept_name}")
    return ValueSetFile(systems=systems, concepts=concepts, analytes=analytes,
                        bilateral=bilateral, qualifiers=qualifiers)
