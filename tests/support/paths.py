"""Where the repository's files are, for tests that read shipped files."""

from __future__ import annotations

from pathlib import Path

#: The repository root (the folder holding ``tests/``).
ROOT = Path(__file__).resolve().parents[2]
