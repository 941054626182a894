"""The outside programs some integration tests check cdss against.

``tests/tools/install.sh`` installs them (the README's test command runs it
first). A test that needs one and cannot find it fails with what to run; it is
never skipped, since a skipped check would pass a gap as green.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import ROOT

#: The folder of the Node.js tools and their lock file.
TOOLS = ROOT / "tests" / "tools"

_INSTALL = "run `bash tests/tools/install.sh` (the README's test command does)"


def node() -> str:
    """The ``node`` executable, with the locked packages installed."""
    found = shutil.which("node")
    if found is None:
        pytest.fail(f"Node.js is not on PATH: {_INSTALL}")
    if not (TOOLS / "node_modules" / ".cdss-lock").is_file():
        pytest.fail(f"the test tools' Node.js packages are not installed: {_INSTALL}")
    return found


def chromium() -> str:
    """A Chromium executable: ``$CDSS_CHROMIUM``, else the first on PATH."""
    configured = os.environ.get("CDSS_CHROMIUM")
    if configured:
        return configured
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(f"no Chromium found (set CDSS_CHROMIUM or install it): {_INSTALL}")


def run_node(script: str, *args: str | Path, timeout: float = 300) -> Any:
    """Run ``tests/tools/<script>`` with ``args``; its standard output, as JSON.

    A script that fails fails the test with what it printed."""
    done = subprocess.run(
        [node(), str(TOOLS / script), *map(str, args)],
        capture_output=True, text=True, timeout=timeout, cwd=TOOLS, check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"{script} exited {done.returncode}:\n{done.stderr}\n{done.stdout}")
    return json.loads(done.stdout)
