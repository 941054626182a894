"""Prove that a cohort screen's result files are the same bytes in two code trees.

``record`` screens each input in several configurations with whatever ``cdss``
this Python imports, and writes the sha256 of every result file to a
manifest; ``compare`` reads two manifests and lists every file whose bytes
differ. Record once on each tree, then compare::

    PYTHONPATH=/path/to/tree-a python bench/screen_identity.py record --out a.json \\
        --input synthea=/data/synthea-r4:2020-06-01 --input gen=/data/gen:2026-03-01
    PYTHONPATH=/path/to/tree-b python bench/screen_identity.py record --out b.json \\
        --input synthea=/data/synthea-r4:2020-06-01 --input gen=/data/gen:2026-03-01
    python bench/screen_identity.py compare a.json b.json

Each input (``--input NAME=PATH:AS_OF``, repeatable; there is no default; give
both records the same paths, as the result files name the input files) is
screened (:func:`cdss.cohort.screen`) in these configurations, each into a
fresh temporary folder:

* ``lean-w1``, ``lean-w2``, ``strict-w1``, ``strict-w2``: the intake mode and
  1 or 2 worker processes, partitions by input size (the default);
* ``lean-w2-p4``: lean, 2 workers, ``partitions=4`` (the default for 2
  workers is 8 or more, so this groups the patients differently);
* ``lean-w2-fhir``: lean, 2 workers, ``formats=("fhir",)`` (adds ``fhir/``);
* ``lean-w1-resumed``: lean, 1 worker, stopped after its partitions were
  evaluated and merged but before the screen finished (the state of a
  screen killed at that point), then partition 0's done marker
  (``.cdss-screen/parts/p00000.done``) and the published result files are
  deleted and the screen is run again with ``resume=True``: it must report
  itself resumed, with every partition but partition 0 reused. A finished
  screen removes its partitions, so there is nothing to resume after one:
  the screen is stopped by wrapping ``cdss.cohort._screen._merge_screen``,
  the one private name this tool uses (it stops with a message if a tree
  has no such function).

For every screen the manifest holds the sha256 of every file in the output
folder except ``run.json`` (timings, memory, resumed: different every run) and
the ``.cdss-screen`` work folder. For an input that is a folder of Bundle JSON
files it also holds, per file, the sha256 of ``cdss.evaluate(bytes,
...).to_json()`` in ``strict`` and ``lean`` mode with ``on_invalid``
``leave-out`` and ``refuse`` (the InputError's message when refused).

``record`` also checks each input's screens against each other and warns
(and notes it in the manifest under ``inconsistent``) when configurations
of the same mode differ in a file other than ``summary.json`` (which names
the workers and partitions), or the resumed screen differs from
``lean-w1`` in any file: the worker count, partitioning and resuming must
not change a result.

The tree measured is the ``cdss`` this Python imports (``PYTHONPATH``). The
screen's worker processes are spawned and import ``cdss`` afresh; ``record``
checks, with one extra small screen whose evaluator reports each worker's
``cdss.__file__``, that they import the same tree, and stops if not.
Running a screen needs the ``cohort`` extra (pyarrow).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cdss
from cdss.cohort import screen
from cdss.errors import InputError

FORMAT = 1
DEFAULT_RULESET = "plantar-cramps"
#: Not compared: measures the run, not its results.
SKIPPED = ("run.json",)
WORK_FOLDER = ".cdss-screen"
#: The done marker of the partition the resumed configuration evaluates again.
DONE_MARKER = Path(WORK_FOLDER) / "parts" / "p00000.done"
#: The result files a screen publishes (deleted before the resume).
PUBLISHED = ("assessments.ndjson", "assessments.parquet", "errors.ndjson", "summary.json",
             "report.html", "worklist.csv", "worklist.parquet", "run.json")

#: configuration -> arguments of screen(); "resumed" is handled by resumed_screen()
CONFIGS: dict[str, dict[str, Any]] = {
    "lean-w1": {"mode": "lean", "workers": 1},
    "lean-w2": {"mode": "lean", "workers": 2},
    "strict-w1": {"mode": "strict", "workers": 1},
    "strict-w2": {"mode": "strict", "workers": 2},
    "lean-w2-p4": {"mode": "lean", "workers": 2, "partitions": 4},
    "lean-w2-fhir": {"mode": "lean", "workers": 2, "formats": ("fhir",)},
    "lean-w1-resumed": {"mode": "lean", "workers": 1, "resumed": True},
}
EVALUATIONS = [(mode, on_invalid) for mode in ("strict", "lean")
               for on_invalid in ("leave-out", "refuse")]

#: Set in the environment of the probe screen's workers: where they report.
PROBE_ENV = "CDSS_SCREEN_IDENTITY_PROBE"
_PROBE_INPUT_AS_OF = "2026-03-01"


# --------------------------------------------------------------------------- #
# Hashing
# --------------------------------------------------------------------------- #
def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def output_hashes(out: Path) -> dict[str, str]:
    """sha256 of every file under ``out`` but run.json and the work folder, by
    path relative to ``out`` (``/``-separated), sorted."""
    found: dict[str, str] = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out)
        if rel.parts[0] == WORK_FOLDER or rel.as_posix() in SKIPPED or not path.is_file():
            continue
        found[rel.as_posix()] = sha256_file(path)
    return found


# --------------------------------------------------------------------------- #
# Inputs
# --------------------------------------------------------------------------- #
_INPUT = re.compile(r"^(?P<name>[^=]+)=(?P<path>.+):(?P<as_of>\d{4}-\d{2}-\d{2}\S*)$")


def parse_input(text: str) -> tuple[str, Path, str]:
    """``NAME=PATH:AS_OF`` -> (name, path, as_of); AS_OF starts with a date."""
    match = _INPUT.match(text)
    if not match:
        raise argparse.ArgumentTypeError(
            f"--input must be NAME=PATH:AS_OF (AS_OF a date such as 2026-03-01), got {text!r}")
    # absolute, so that the records of two runs from different folders agree: the
    # result files name the input files (summary.json, errors.ndjson)
    path = Path(match["path"]).expanduser().resolve()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"--input {match['name']}: {path} does not exist")
    return match["name"], path, match["as_of"]


def bundle_files(path: Path) -> list[Path]:
    """The Bundle files of an input that is a folder of Bundle JSON files (no
    bulk-export manifest, no NDJSON), else none."""
    if not path.is_dir() or (path / "manifest.json").exists():
        return []
    if any(p.name.endswith((".ndjson", ".ndjson.gz")) for p in path.iterdir()):
        return []
    return sorted(p for p in path.glob("*.json") if p.is_file())


# --------------------------------------------------------------------------- #
# The tree measured
# --------------------------------------------------------------------------- #
def tree() -> dict[str, Any]:
    """Which cdss this process imports, and its git commit when it is a checkout."""
    root = Path(cdss.__file__).resolve().parent.parent
    found: dict[str, Any] = {"cdss_file": str(Path(cdss.__file__).resolve()),
                             "cdss_version": cdss.__version__, "python": platform.python_version()}
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True,
                                capture_output=True, text=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                  "--untracked-files=no", "--", "cdss"],
                                 check=True, capture_output=True, text=True).stdout.strip()
        found["git_commit"] = commit
        found["git_cdss_modified"] = bool(changed)
    except (OSError, subprocess.CalledProcessError):
        pass
    return found


def probe_evaluate(record: Any, **kwargs: Any) -> Any:
    """Evaluates as cdss.evaluate does, and reports which cdss this worker process
    imported (a file per process in the folder named by PROBE_ENV)."""
    folder = os.environ.get(PROBE_ENV)
    if folder:
        mine = Path(folder) / f"{os.getpid()}.json"
        if not mine.exists():
            mine.write_text(json.dumps({"pid": os.getpid(), "cdss_file": str(
                Path(cdss.__file__).resolve()), "python": sys.executable}))
    return cdss.evaluate(record, **kwargs)


def check_workers(ruleset: str, scratch: Path) -> list[dict[str, Any]]:
    """Screen eight generated patients with 2 workers and the probe evaluator; fail
    unless every worker imported this process's cdss."""
    from cdss.cohort import generate_cohort

    data, out, reports = scratch / "probe-in", scratch / "probe-out", scratch / "probe-workers"
    reports.mkdir(parents=True)
    generate_cohort(8, seed=1, out=data)
    os.environ[PROBE_ENV] = str(reports)
    try:
        screen([data], ruleset=ruleset, as_of=_PROBE_INPUT_AS_OF, out=out, workers=2,
               partitions=2, evaluator=probe_evaluate)
    finally:
        os.environ.pop(PROBE_ENV, None)
    seen = [json.loads(p.read_text()) for p in sorted(reports.glob("*.json"))]
    mine = str(Path(cdss.__file__).resolve())
    if not seen or any(s["pid"] == os.getpid() for s in seen):
        sys.exit("screen_identity: the probe screen's patients were not evaluated in worker "
                 "processes, so which cdss the workers import is unknown")
    other = [s for s in seen if s["cdss_file"] != mine]
    if other:
        sys.exit(f"screen_identity: a worker process imported {other[0]['cdss_file']}, this "
                 f"process {mine}: the record would mix two trees (is PYTHONPATH exported?)")
    return seen


# --------------------------------------------------------------------------- #
# record
# --------------------------------------------------------------------------- #
class _Stopped(Exception):
    """Raised to stop a screen after its merge, before it finishes."""


def _stop_after_merge() -> Callable[[], None]:
    """Make the next screen stop right after it merged its partitions (before
    summary.json and the clean-up of its work folder); return the undo."""
    from cdss.cohort import _screen as screen_module

    real = getattr(screen_module, "_merge_screen", None)
    if real is None:
        sys.exit("screen_identity: this tree has no cdss.cohort._screen._merge_screen, which "
                 "the resumed configuration stops a screen after: update the harness")

    def merged_then_stopped(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise _Stopped

    screen_module._merge_screen = merged_then_stopped

    def undo() -> None:
        screen_module._merge_screen = real

    return undo


def resumed_screen(path: Path, out: Path, ruleset: str, as_of: str,
                   options: dict[str, Any]) -> Any:
    """A screen stopped after its merge, partition 0's done marker and the
    published files deleted, then resumed; checks it says it resumed."""
    undo = _stop_after_merge()
    try:
        screen([path], ruleset=ruleset, as_of=as_of, out=out, **options)
    except _Stopped:
        pass
    else:
        sys.exit("screen_identity: the screen to resume was not stopped")
    finally:
        undo()
    marker = out / DONE_MARKER
    if not marker.exists():
        sys.exit(f"screen_identity: the stopped screen left no {DONE_MARKER} to delete "
                 "(has the work folder's layout changed?)")
    marker.unlink()
    for name in PUBLISHED:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "fhir", ignore_errors=True)
    summary = screen([path], ruleset=ruleset, as_of=as_of, out=out, resume=True, **options)
    reused = summary.timings.get("partitions_reused")
    if not summary.resumed or reused != summary.partitions - 1:
        sys.exit(f"screen_identity: the resumed screen of {path} says resumed="
                 f"{summary.resumed}, {reused} of {summary.partitions} partitions reused "
                 f"(expected all but partition 0)")
    return summary


def record_screens(name: str, path: Path, as_of: str, ruleset: str, configs: list[str],
                   scratch: Path, keep: bool = False) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for config in configs:
        options = {k: v for k, v in CONFIGS[config].items() if k != "resumed"}
        out = scratch / f"{name}-{config}"
        started = time.perf_counter()
        if CONFIGS[config].get("resumed"):
            summary = resumed_screen(path, out, ruleset, as_of, options)
        else:
            summary = screen([path], ruleset=ruleset, as_of=as_of, out=out, **options)
        seconds = time.perf_counter() - started
        files = output_hashes(out)
        results[config] = {"files": files, "patients": summary.patients,
                           "partitions": summary.partitions, "resumed": summary.resumed,
                           "seconds": round(seconds, 2)}
        if not keep:
            shutil.rmtree(out)
        print(f"  {name} {config}: {summary.patients:,} patients, {summary.partitions} "
              f"partitions, {len(files)} files, {seconds:.1f} s", file=sys.stderr, flush=True)
    return results


#: Files that name the workers and partitions: the same only for the same configuration.
CONFIG_SPECIFIC = ("summary.json",)


def inconsistencies(screens: dict[str, Any]) -> list[str]:
    """Within one input: files that differ between configurations of the same
    mode (workers and partitions must not change them; only ``summary.json``
    says which were used), and any file of the resumed screen that differs
    from the uninterrupted one's."""
    found = []
    names = sorted(screens)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if CONFIGS[a]["mode"] != CONFIGS[b]["mode"]:
                continue
            same_run = {k: v for k, v in CONFIGS[a].items() if k != "resumed"} == {
                k: v for k, v in CONFIGS[b].items() if k != "resumed"}
            x, y = screens[a]["files"], screens[b]["files"]
            for file in sorted(set(x) & set(y)):
                if x[file] != y[file] and (same_run or file not in CONFIG_SPECIFIC):
                    found.append(f"{a} / {b} / {file}")
    return found


def record_evaluations(name: str, files: list[Path], as_of: str,
                       ruleset: Any) -> dict[str, dict[str, Any]]:
    """Per (mode, on_invalid): file name -> sha256 of the Assessment's JSON, or
    {"refused": message} when evaluate raised InputError."""
    results: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    for mode, on_invalid in EVALUATIONS:
        found: dict[str, Any] = {}
        for path in files:
            try:
                assessment = cdss.evaluate(path.read_bytes(), ruleset=ruleset, as_of=as_of,
                                           mode=mode, on_invalid=on_invalid)
            except InputError as exc:
                found[path.name] = {"refused": str(exc)}
            else:
                found[path.name] = hashlib.sha256(assessment.to_json()).hexdigest()
        results[f"{mode}/{on_invalid}"] = found
    print(f"  {name} evaluate: {len(files)} files x {len(EVALUATIONS)}, "
          f"{time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return results


def record(args: argparse.Namespace) -> int:
    if not args.input:
        sys.exit("screen_identity record: give at least one --input NAME=PATH:AS_OF")
    names = [name for name, _, _ in args.input]
    if len(set(names)) != len(names):
        sys.exit("screen_identity record: input names must differ")
    configs = args.config or list(CONFIGS)
    started = time.perf_counter()
    rs = cdss.load_ruleset(args.ruleset)
    manifest: dict[str, Any] = {
        "format": FORMAT, "tree": tree(),
        "ruleset": {"asked": args.ruleset, "id": rs.id, "version": rs.version,
                    "sha256": rs.sha256},
        "inputs": {}, "screens": {}, "evaluations": {}, "inconsistent": {},
    }
    print(f"screen_identity: cdss {manifest['tree']['cdss_version']} from "
          f"{manifest['tree']['cdss_file']}, ruleset {rs.id}@{rs.version}",
          file=sys.stderr, flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="screen-identity-", dir=args.work))
    try:
        manifest["workers"] = check_workers(args.ruleset, scratch)
        print(f"  workers import the same cdss ({len(manifest['workers'])} probed)",
              file=sys.stderr, flush=True)
        for name, path, as_of in args.input:
            bundles = bundle_files(path)
            manifest["inputs"][name] = {"path": str(path), "as_of": as_of,
                                        "bundle_files": len(bundles)}
            manifest["screens"][name] = record_screens(name, path, as_of, args.ruleset,
                                                       configs, scratch, args.keep)
            odd = inconsistencies(manifest["screens"][name])
            if odd:
                manifest["inconsistent"][name] = odd
                print(f"  WARNING {name}: configurations that should agree differ: "
                      + "; ".join(odd), file=sys.stderr, flush=True)
            if bundles and not args.no_evaluate:
                manifest["evaluations"][name] = record_evaluations(name, bundles, as_of, rs)
    finally:
        if args.keep:
            print(f"kept {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    manifest["seconds"] = round(time.perf_counter() - started, 1)
    Path(args.out).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    files = sum(len(c["files"]) for s in manifest["screens"].values() for c in s.values())
    evaluated = sum(len(v) for e in manifest["evaluations"].values() for v in e.values())
    print(f"recorded {files} result files of {sum(map(len, manifest['screens'].values()))} "
          f"screens and {evaluated} evaluations in {manifest['seconds']} s: {args.out}")
    return 0


# --------------------------------------------------------------------------- #
# compare
# --------------------------------------------------------------------------- #
def _short(value: Any) -> str:
    if value is None:
        return "(absent)"
    if isinstance(value, dict):
        return "refused: " + str(value.get("refused"))[:200]
    return str(value)[:16]


def differences(a: dict[str, Any], b: dict[str, Any]) -> tuple[list[str], int]:
    """Every result that differs between two manifests, as lines, and the
    number of results that are equal."""
    found: list[str] = []
    equal = 0

    def side(where: str, x: Any, y: Any) -> None:
        nonlocal equal
        if x == y:
            equal += 1
        else:
            found.append(f"{where}: A {_short(x)} != B {_short(y)}")

    for part in ("screens", "evaluations"):
        left, right = a.get(part, {}), b.get(part, {})
        for name in sorted(set(left) | set(right)):
            if name not in left or name not in right:
                found.append(f"{name}: {part} only in {'A' if name in left else 'B'}")
                continue
            for config in sorted(set(left[name]) | set(right[name])):
                x, y = left[name].get(config), right[name].get(config)
                if x is None or y is None:
                    found.append(f"{name} / {config}: only in {'A' if x is not None else 'B'}")
                    continue
                if part == "screens":
                    x, y = x["files"], y["files"]
                for file in sorted(set(x) | set(y)):
                    side(f"{name} / {config} / {file}", x.get(file), y.get(file))
    return found, equal


def compare(args: argparse.Namespace) -> int:
    a, b = (json.loads(Path(p).read_text()) for p in (args.a, args.b))
    for label, m, path in (("A", a, args.a), ("B", b, args.b)):
        t = m.get("tree", {})
        print(f"{label}: {path}: cdss {t.get('cdss_version')} {t.get('cdss_file')} "
              f"commit {t.get('git_commit', '?')[:12]}"
              f"{' (cdss modified)' if t.get('git_cdss_modified') else ''}")
    notes = [f"{what} differ: A {a.get(what)} B {b.get(what)}"
             for what in ("ruleset", "inputs") if a.get(what) != b.get(what)]
    if a.get("inputs") != b.get("inputs"):
        notes.append("the result files name the input files and the as-of date: record "
                     "both trees with the same --input arguments")
    notes += [f"{label} has configurations of one tree that differ where they should not: "
              f"{m['inconsistent']}" for label, m in (("A", a), ("B", b))
              if m.get("inconsistent")]
    for note in notes:
        print(f"note: {note}")
    found, equal = differences(a, b)
    for line in found:
        print(line)
    if found:
        print(f"{len(found)} differences, {equal} equal")
        return 1
    print(f"{equal} equal, no differences")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="screen the inputs and write the files' sha256")
    rec.add_argument("--out", required=True, help="the manifest to write (JSON)")
    rec.add_argument("--input", action="append", type=parse_input, default=[],
                     metavar="NAME=PATH:AS_OF",
                     help="an input of cdss.cohort.screen and its as-of date; repeat")
    rec.add_argument("--ruleset", default=DEFAULT_RULESET,
                     help=f"id or id@version (default {DEFAULT_RULESET}, its default version)")
    rec.add_argument("--config", action="append", choices=list(CONFIGS),
                     help="only these configurations (repeat; default all)")
    rec.add_argument("--no-evaluate", action="store_true",
                     help="leave out the per-file cdss.evaluate hashes")
    rec.add_argument("--work", default=None,
                     help="where the temporary output folders go (default: the system's)")
    rec.add_argument("--keep", action="store_true", help="keep the temporary folders")
    cmp_ = sub.add_parser("compare", help="list the results that differ between two records")
    cmp_.add_argument("a")
    cmp_.add_argument("b")
    args = parser.parse_args(argv)
    return record(args) if args.command == "record" else compare(args)


if __name__ == "__main__":
    sys.exit(main())
