"""Assess the example patients and print each Assessment as text a clinician can read.

Run from the project folder after installing cdss:

    python examples/assess_examples.py            # the latest plantar-cramps version
    python examples/assess_examples.py --ruleset plantar-cramps@1.0.0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cdss
from cdss.outputs.text import render_text

HERE = Path(__file__).resolve().parent
AS_OF = "2026-03-01"  # the evaluation time the example records were written for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ruleset", default="plantar-cramps")
    args = parser.parse_args()
    ruleset = cdss.load_ruleset(args.ruleset)
    for path in sorted((HERE / "patients").glob("*.json")):
        assessment = cdss.evaluate(path.read_bytes(), ruleset=ruleset, as_of=AS_OF)
        print(f"=== {path.stem}")
        print(render_text(assessment))


if __name__ == "__main__":
    main()
