"""The layout: a private line that public modules keep, and one error tree.

A public module is one whose dotted path has no part starting with ``_``.
Its public names (no leading ``_``) must have a public home: a class or
function defined in a private module is public only when its package
re-exports it in ``__all__`` (which makes the package its home). Every
``__all__`` lists exactly the public classes and functions whose home is
that module, and each of them has a docstring. Every CDSSError lives in
``cdss.errors``, and its docstring draws the tree the classes form.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import typing
from types import ModuleType

import pytest

import cdss
from cdss import errors


def _private(dotted: str) -> bool:
    return any(part.startswith("_") for part in dotted.split("."))


def _modules() -> list[ModuleType]:
    names = ["cdss"] + [info.name for info in pkgutil.walk_packages(cdss.__path__, "cdss.")]
    return [importlib.import_module(n) for n in sorted(names) if not _private(n)]


PUBLIC = _modules()


def _ours(obj: object) -> bool:
    home = getattr(obj, "__module__", None)
    return (inspect.isclass(obj) or inspect.isfunction(obj)) and isinstance(home, str) \
        and (home == "cdss" or home.startswith("cdss."))


def test_the_public_modules_are_found() -> None:
    names = {m.__name__ for m in PUBLIC}
    assert {"cdss", "cdss.intake", "cdss.rulesets", "cdss.outputs.fhir", "cdss.hooks",
            "cdss.service", "cdss.cohort", "cdss.testing", "cdss.cli", "cdss.engine"} <= names
    assert not any(_private(n) for n in names)


@pytest.mark.parametrize("module", PUBLIC, ids=lambda m: m.__name__)
def test_no_public_name_has_a_private_home(module: ModuleType) -> None:
    leaks = [f"{module.__name__}.{name} (home {obj.__module__})"
             for name, obj in vars(module).items()
             if not name.startswith("_") and _ours(obj) and _private(obj.__module__)]
    assert leaks == []


@pytest.mark.parametrize("module", PUBLIC, ids=lambda m: m.__name__)
def test_all_lists_what_the_module_is_home_to(module: ModuleType) -> None:
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{module.__name__} has no __all__"
    assert all(hasattr(module, name) for name in exported)
    homed = {name for name, obj in vars(module).items()
             if not name.startswith("_") and _ours(obj) and obj.__module__ == module.__name__}
    assert homed - set(exported) == set(), "defined here but not in __all__"


def _undocumented(obj: object) -> bool:
    doc = (obj.__doc__ or "").strip()
    # a dataclass without a docstring is given its signature as one
    return not doc or doc.startswith(f"{getattr(obj, '__name__', '')}(")


@pytest.mark.parametrize("module", PUBLIC, ids=lambda m: m.__name__)
def test_every_exported_class_and_function_has_a_docstring(module: ModuleType) -> None:
    # a type alias (``Fetch = Callable[...]``) is no class, though 3.10's inspect says so
    missing = [name for name in getattr(module, "__all__", ())
               if (inspect.isclass(obj := getattr(module, name)) or inspect.isfunction(obj))
               and typing.get_origin(obj) is None and _undocumented(obj)]
    assert missing == []


def _error_classes() -> set[type[BaseException]]:
    found: set[type[BaseException]] = set()
    todo: list[type[BaseException]] = [errors.CDSSError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_every_cdss_error_lives_in_errors() -> None:
    assert {c.__name__: c.__module__ for c in _error_classes()} == \
        {name: "cdss.errors" for name in errors.__all__}


@pytest.mark.parametrize("module", PUBLIC, ids=lambda m: m.__name__)
def test_no_public_exception_outside_errors(module: ModuleType) -> None:
    if module is errors:
        return
    defined = [name for name, obj in vars(module).items()
               if inspect.isclass(obj) and issubclass(obj, BaseException)
               and obj.__module__.startswith("cdss") and obj.__module__ != "cdss.errors"]
    assert defined == []


_BRANCH = re.compile(r"^(?P<indent>[│ ]*)(?:[├└]── )?(?P<name>\w+)(?: \((?P<builtin>[\w, ]+)\))?")


def _drawn_tree() -> dict[str, tuple[str | None, tuple[str, ...]]]:
    """``{class: (parent, built-ins)}`` from the tree in the errors docstring."""
    doc = errors.__doc__ or ""
    lines = doc.split("::", 1)[1].strip("\n").splitlines()
    tree: dict[str, tuple[str | None, tuple[str, ...]]] = {}
    stack: list[str] = []
    for line in lines:
        if not line.strip():
            break
        text = line[4:]
        match = _BRANCH.match(text)
        assert match, line
        depth = len(match["indent"]) // 4 + (0 if text.startswith("CDSSError") else 1)
        del stack[depth:]
        builtins = tuple(b.strip() for b in (match["builtin"] or "").split(",") if b.strip())
        tree[match["name"]] = (stack[-1] if stack else None, builtins)
        stack.append(match["name"])
    return tree


def test_the_errors_docstring_draws_the_tree() -> None:
    actual: dict[str, tuple[str | None, tuple[str, ...]]] = {}
    for cls in _error_classes():
        ours = [b.__name__ for b in cls.__bases__ if issubclass(b, errors.CDSSError)]
        others = tuple(b.__name__ for b in cls.__bases__ if not issubclass(b, errors.CDSSError)
                       and b is not Exception)
        actual[cls.__name__] = (ours[0] if ours else None, others)
    assert _drawn_tree() == actual


def test_every_error_says_when_it_is_raised() -> None:
    assert [c.__name__ for c in _error_classes() if not (c.__doc__ or "").strip()] == []


def test_the_version_is_written_once() -> None:
    from importlib.metadata import version

    from tests.support.release import DISTRIBUTION

    assert cdss.__version__ == version(DISTRIBUTION)


def _imports_at_load() -> dict[str, set[str]]:
    """``{module: modules of cdss it imports when loaded}``: module-level imports
    only (not those inside functions or under ``TYPE_CHECKING``)."""
    import ast
    from pathlib import Path

    root = Path(cdss.__file__).parent
    names = {".".join(("cdss", *p.relative_to(root).with_suffix("").parts)).removesuffix(
        ".__init__"): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        found: set[str] = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    found.add(full if full in names else node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        graph[name] = {m for m in found if m in names and m != name}
    return graph


def test_no_import_cycle() -> None:
    graph = _imports_at_load()
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            cycles.append([*path[path.index(node):], node])
            return
        for nxt in sorted(graph[node]):
            visit(nxt, [*path, node])

    for start in sorted(graph):
        visit(start, [])
    assert cycles == []


def test_outputs_know_only_the_assessment() -> None:
    graph = _imports_at_load()
    for name in ("cdss.outputs.text", "cdss.outputs.fhir", "cdss.outputs.cds_hooks"):
        assert not graph[name] & {"cdss.evaluation", "cdss.engine", "cdss.hooks"}
    import inspect as _inspect

    import cdss.outputs.fhir

    assert "load_ruleset" not in _inspect.getsource(cdss.outputs.fhir)


def test_no_ruleset_is_named_in_the_code() -> None:
    """The generic layers carry no clinical default: the shipped index names the
    default ruleset, and no string constant in cdss names a shipped ruleset."""
    import ast
    from pathlib import Path

    from cdss.rulesets import available_rulesets

    ids = {spec.partition("@")[0] for spec in available_rulesets()}
    root = Path(cdss.__file__).parent
    named = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    node.value.partition("@")[0] in ids:
                named.append(f"{path.relative_to(root)}:{node.lineno} {node.value!r}")
    assert named == []
