"""The release as users install it: which cdss the tests import, and what a wheel
must hold.

CI runs the suite against the installed wheel (``CDSS_TEST_INSTALLED=1``), from a
copy of the repository without the ``cdss/`` package; ``CDSS_TEST_DIST`` names the
folder holding the sdist and wheel it built and installed.
"""

from __future__ import annotations

import os
import sysconfig
import tarfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

#: Set to 1 when the suite must test the installed package, never a source tree.
INSTALLED_ENV = "CDSS_TEST_INSTALLED"
#: The folder holding the sdist and the wheel under test.
DIST_ENV = "CDSS_TEST_DIST"
#: The distribution's name on PyPI (the import name stays ``cdss``).
DISTRIBUTION = "cdss-fhir"


def installed_mode() -> bool:
    return os.environ.get(INSTALLED_ENV) == "1"


def site_dirs() -> set[Path]:
    """The folders the running interpreter installs packages into."""
    paths = sysconfig.get_paths()
    return {Path(paths[key]).resolve() for key in ("purelib", "platlib")}


def not_installed(package_dir: Path, sites: Iterable[Path]) -> str | None:
    """Why ``package_dir`` (where ``cdss`` was imported from) is not an installed
    package, or None when it sits directly in one of ``sites``. A source tree, an
    editable install (whose files stay in the tree) and a copy on ``PYTHONPATH``
    are all refused."""
    found = package_dir.resolve()
    sites = {Path(s).resolve() for s in sites}
    if found.parent in sites:
        return None
    return (f"{INSTALLED_ENV}=1, but cdss was imported from {found}, not from the installed "
            f"package in {' or '.join(sorted(map(str, sites)))}: run the suite from a copy of "
            "the repository without its cdss/ folder, with the wheel installed")


def source_files(root: Path) -> list[str]:
    """The files under ``root/cdss`` and ``root/rulesets`` as paths relative to
    ``root`` (bytecode left out)."""
    found = []
    for top in ("cdss", "rulesets"):
        for path in sorted((root / top).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                found.append(path.relative_to(root).as_posix())
    return found


def sdist_files(sdist: Path) -> list[str]:
    """The files of an sdist, relative to its top folder (``cdss_fhir-1.0.0/``)."""
    with tarfile.open(sdist) as archive:
        names = [m.name for m in archive.getmembers() if m.isfile()]
    return [name.split("/", 1)[1] for name in names if "/" in name]


def expected_wheel_files(source: Iterable[str]) -> set[str]:
    """What a wheel built from ``source`` (paths relative to the project root)
    must hold, besides its ``.dist-info``: every file of the ``cdss`` package
    (modules, ``py.typed``, the SQL on FHIR views) and every file under
    ``rulesets/``, shipped as ``cdss/_rulesets/``."""
    expected = set()
    for name in source:
        if name.startswith("cdss/"):
            expected.add(name)
        elif name.startswith("rulesets/"):
            expected.add("cdss/_rulesets/" + name.removeprefix("rulesets/"))
    return expected


def wheel_files(wheel: Path) -> set[str]:
    """A wheel's files, its ``.dist-info`` folder left out."""
    with zipfile.ZipFile(wheel) as archive:
        return {n for n in archive.namelist()
                if not n.endswith("/") and ".dist-info/" not in n}


def wheel_metadata(wheel: Path) -> dict[str, str]:
    """The wheel's ``METADATA`` and ``entry_points.txt`` as text, by file name."""
    with zipfile.ZipFile(wheel) as archive:
        return {Path(n).name: archive.read(n).decode("utf-8") for n in archive.namelist()
                if n.endswith((".dist-info/METADATA", ".dist-info/entry_points.txt"))}


def differences(expected: set[str], actual: set[str]) -> list[str]:
    """Each file missing from the wheel and each file it should not hold, one line
    each (nothing when they agree)."""
    return ([f"missing from the wheel: {n}" for n in sorted(expected - actual)]
            + [f"in the wheel, not in the source: {n}" for n in sorted(actual - expected)])
