"""The public API: explicit, sorted, importable without the optional extras."""

from __future__ import annotations

import subprocess
import sys

import cdss


def test_all_is_sorted_and_importable() -> None:
    assert list(cdss.__all__) == sorted(cdss.__all__)
    for name in cdss.__all__:
        assert hasattr(cdss, name), name


def test_public_names_are_exactly_the_documented_ones() -> None:
    public = {n for n in dir(cdss) if not n.startswith("_") or n == "__version__"}
    modules = {n for n in public if type(getattr(cdss, n)).__name__ == "module"}
    assert public - modules == set(cdss.__all__)


def test_import_cdss_pulls_in_no_optional_or_heavy_dependency() -> None:
    code = (
        "import sys, cdss\n"
        "bad = [m for m in ('hypothesis', 'typer', 'dask', 'uvicorn', 'starlette', 'durable',"
        " 'fhir.resources') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""
