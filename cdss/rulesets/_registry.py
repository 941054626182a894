"""Where rulesets are found, and the versions loaded in this process.

A ruleset version lives in ``<folder>/<id>/<version>.yaml``; the shipped ones
in the package, a site's in the folders it adds. ``load_ruleset("id")`` is the
highest active version, ``"id@version"`` pins one; each file is loaded once
per process (while it is unchanged) and several versions live side by side.

No ruleset is built into the code: the shipped folder's ``index.yaml`` names
the *default* ruleset, the one :func:`load_ruleset` loads when no spec is
given (and so every layer that takes an optional ruleset).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cdss.errors import InvalidArgument, RulesetError, RulesetNotFoundError
from cdss.rulesets._loading import load_ruleset_file
from cdss.rulesets._reading import read_yaml, suggest
from cdss.rulesets._ruleset import Ruleset

__all__ = ["available_rulesets", "builtin_folder", "default_ruleset_id", "load_ruleset"]

_VERSION_FILE = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)\.ya?ml$")
_ID = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_INDEX = "index.yaml"


def builtin_folder() -> Path:
    """The folder of the rulesets shipped with cdss."""
    package = Path(__file__).resolve().parent.parent  # the cdss package
    installed = package / "_rulesets"  # a wheel ships them inside the package
    return installed if installed.is_dir() else package.parent / "rulesets"


def default_ruleset_id() -> str:
    """The id of the default ruleset, as the shipped folder's ``index.yaml``
    names it (``default: <id>``)."""
    path = builtin_folder() / _INDEX
    if not path.is_file():
        raise RulesetNotFoundError("the shipped rulesets have no index naming the default "
                                   "ruleset; name a ruleset", path=str(path))
    index = read_yaml(path)
    rid = index.get("default") if isinstance(index, dict) else None
    if not isinstance(rid, str) or not _ID.match(rid):
        raise RulesetError(f"{_INDEX} must name the default ruleset as 'default: <id>', got "
                           f"{rid!r}", path=str(path))
    return rid


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def available_rulesets(*, paths: Sequence[str | Path] | None = None) -> dict[str, list[Path]]:
    """``{id@version: [file, ...]}`` for every ruleset file found."""
    found: dict[str, list[Path]] = {}
    folders = [builtin_folder(), *(Path(p) for p in (paths or ()))]
    for folder in folders:
        if not folder.is_dir():
            raise RulesetNotFoundError("ruleset folder does not exist", path=str(folder))
        for rdir in sorted(p for p in folder.iterdir() if p.is_dir()):
            for vfile in sorted(rdir.iterdir()):
                if _VERSION_FILE.match(vfile.name):
                    found.setdefault(f"{rdir.name}@{vfile.stem}", []).append(vfile)
    return found


_LOCK = threading.Lock()
_CACHE: dict[tuple[Any, ...], Ruleset] = {}


def load_ruleset(
    spec: str | None = None,
    *,
    paths: Sequence[str | Path] | None = None,
    concept_maps: Sequence[str | Path] = (),
) -> Ruleset:
    """Load a ruleset by ``id`` (its latest active version) or ``id@version``;
    None loads the default ruleset (:func:`default_ruleset_id`).

    ``paths`` adds folders holding a site's own rulesets (``<folder>/<id>/
    <version>.yaml``); ``concept_maps`` adds a site's code mappings. Loaded
    versions are cached per process; several versions live side by side.
    """
    if spec is None:
        spec = default_ruleset_id()
    if not isinstance(spec, str) or not spec:
        raise InvalidArgument(f"spec must be 'id' or 'id@version', got {spec!r}")
    if isinstance(paths, (str, Path)):
        raise InvalidArgument("paths must be a list of folders, not one folder")
    rid, _, version = spec.partition("@")
    found = available_rulesets(paths=paths)
    if version:
        files = found.get(spec)
        if not files:
            known = sorted(k for k in found if k.startswith(f"{rid}@"))
            raise RulesetNotFoundError(
                f"no ruleset {spec!r}" + (f"; available: {', '.join(known)}" if known else ""),
                suggestion=suggest(spec, found))
        if len(files) > 1:
            raise RulesetError(f"{spec} is defined in more than one folder: "
                               f"{', '.join(str(f) for f in files)}")
        return _load_cached(files[0], concept_maps)
    versions = sorted((k.partition("@")[2] for k in found if k.partition("@")[0] == rid),
                      key=_version_key, reverse=True)
    if not versions:
        ids = sorted({k.partition("@")[0] for k in found})
        raise RulesetNotFoundError(f"no ruleset {rid!r}; available: {', '.join(ids)}",
                                   suggestion=suggest(rid, ids))
    for candidate in versions:
        files = found[f"{rid}@{candidate}"]
        if len(files) > 1:
            raise RulesetError(f"{rid}@{candidate} is defined in more than one folder")
        ruleset = _load_cached(files[0], concept_maps)
        if ruleset.file.status == "active":
            return ruleset
    raise RulesetNotFoundError(f"ruleset {rid!r} has no active version; pin one with id@version")


def _load_cached(path: Path, concept_maps: Sequence[str | Path]) -> Ruleset:
    key = (str(path.resolve()), path.stat().st_mtime_ns,
           tuple(str(Path(m).resolve()) for m in concept_maps))
    with _LOCK:
        cached = _CACHE.get(key)
        if cached is None:
            cached = load_ruleset_file(path, concept_maps=concept_maps)
            _CACHE[key] = cached
        return cached
