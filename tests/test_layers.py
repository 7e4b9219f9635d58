"""The import contract of ``reconciler``: which part may import which.

The layers are docs/ARCHITECTURE.md "Layers", as data: :data:`LAYERS` (lowest first) and
:data:`ALLOWED` (every arrow the layers alone would refuse, each a named row with a reason).
Moving code between parts means editing these two tables, and nothing else.

What counts as an import (read from the source with :mod:`ast`, never by importing it):

- ``import x`` / ``from x import y`` anywhere: module level, inside functions, in ``try``;
- a string constant naming a module of the package (``"reconciler.fabric.memory"``): the
  lazy front doors (``importlib.import_module`` behind ``__getattr__``) import by name;
- imports under ``if TYPE_CHECKING:`` are typing only: they may point to the same layer
  (no row needed) or lower, never higher.

Rules, for a module of unit ``a`` (``reconciler/<a>.py`` or ``reconciler/<a>/``) importing a
module of unit ``b``:

1. both units are in the table (a new module is placed on purpose);
2. ``b``'s layer is not above ``a``'s;
3. in the same layer (except the bottom, whose helpers may use each other), a runtime arrow
   between two units needs an :data:`ALLOWED` row;
4. units in :data:`PURE` import none of the listed libraries, directly or through the
   package modules they import at run time;
5. every :data:`ALLOWED` row is still used (a stale exception is deleted, not kept).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = ROOT / "reconciler"


@dataclass(frozen=True)
class Layer:
    name: str
    units: frozenset[str]
    peers_free: bool = False  # units of this layer may import each other without a row
    what: str = ""


def _layer(name: str, units: str, what: str, *, peers_free: bool = False) -> Layer:
    return Layer(name, frozenset(units.split()), peers_free, what)


# Lowest first. A unit is a top-level module (``errors`` for reconciler/errors.py) or a
# subpackage (``core`` for reconciler/core/); ``reconciler`` is the package's own
# ``__init__`` (``__version__``). Units listed before they exist are placed in advance.
LAYERS: tuple[Layer, ...] = (
    _layer(
        "bottom",
        "reconciler errors records model addr files clock home aio logs webserve lazy ports "
        "httpclient",
        "shared helpers and the domain model: stdlib, third-party and each other only",
        peers_free=True,
    ),
    _layer(
        "domain",
        "core fabric spore repo garden identity",
        "the parts the services are built from; core is pure",
    ),
    _layer(
        "observe",
        "observe",
        "status, metrics, dashboard, webhooks: mounted by every service",
    ),
    _layer(
        "client",
        "client",
        "one client for a running mesh (HTTP to agents), for the services and the verbs",
    ),
    _layer(
        "services",
        "agent edge reconcile mesh",
        "the long-running processes, each owning its wiring",
    ),
    _layer("commands", "commands", "one module per area of `myco` verbs: parse and render"),
    _layer(
        "entry",
        "cli __main__ testing",
        "the CLI entry point; `reconciler.testing`, the public index of shipped fakes",
    ),
)


@dataclass(frozen=True)
class Allowed:
    """An arrow the layers alone would refuse: ``source`` may import ``target``.

    Both are module names or package prefixes (``reconciler.mesh`` covers its modules).
    """

    name: str
    source: str
    target: str
    reason: str


ALLOWED: tuple[Allowed, ...] = (
    Allowed(
        "main-runs-cli",
        "reconciler.__main__",
        "reconciler.cli",
        "`python -m reconciler` is the `myco` command",
    ),
    Allowed(
        "repo-stores-spores",
        "reconciler.repo",
        "reconciler.spore",
        "the repo is a store of spores: it re-hashes and reads manifests on put and list",
    ),
    Allowed(
        "mesh-kills-orphans",
        "reconciler.mesh.up",
        "reconciler.agent.runner",
        "`myco up` stop kills instances a dead agent left: it reads the pid + kernel start "
        "time check (read_start_ticks). Debt: should come through an agent front door",
    ),
    Allowed(
        "mesh-reads-agent-state",
        "reconciler.mesh.up",
        "reconciler.agent.state",
        "the same clean-up reads each agent's persisted instances (StateDir). Debt: should "
        "come through an agent front door",
    ),
)

# Units that import no I/O library: not directly, not through the modules they import.
IO_LIBRARIES = frozenset(
    "asyncio socket subprocess os time random datetime aiohttp yaml git watchdog psutil "
    "shutil tempfile io logging threading httptools".split()
)
PURE: Mapping[str, frozenset[str]] = {"core": IO_LIBRARIES}


# --------------------------------------------------------------------------- the checker


@dataclass(frozen=True)
class Import:
    path: Path  # the importing file
    line: int
    source: str  # the importing module, e.g. reconciler.mesh.up
    target: str  # the imported module (resolved: a submodule when it is one)
    text: str  # the statement as written
    kind: str  # "runtime" | "function" | "lazy" | "typing"

    @property
    def typing_only(self) -> bool:
        return self.kind == "typing"


def module_name(path: Path, package_dir: Path) -> str:
    rel = path.relative_to(package_dir.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules(package_dir: Path) -> dict[str, Path]:
    return {
        module_name(p, package_dir): p
        for p in sorted(package_dir.rglob("*.py"))
        if "__pycache__" not in p.parts
    }


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _docstring_nodes(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


_MODULE_STRING = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


def imports_of(path: Path, package_dir: Path, modules: Iterable[str]) -> Iterator[Import]:
    """Every import in ``path`` (see the module docstring for what counts)."""
    known = set(modules)
    top = package_dir.name
    source = module_name(path, package_dir)
    is_pkg = path.name == "__init__.py"
    here = source if is_pkg else source.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    docstrings = _docstring_nodes(tree)

    def resolve(base: str, names: Sequence[str]) -> list[str]:
        # ``from pkg import sub`` imports the submodule ``pkg.sub``; else ``pkg`` itself.
        out = [f"{base}.{n}" for n in names if f"{base}.{n}" in known]
        return out if len(out) == len(names) else [base, *out]

    def visit(node: ast.AST, kind: str) -> Iterator[Import]:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from visit(child, "typing")
            for child in node.orelse:
                yield from visit(child, kind)
            return
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            if kind == "runtime":
                kind = "function"
        text = ""
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
            text = ast.unparse(node)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = here.split(".")
                if node.level > 1:
                    base_parts = base_parts[: -(node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = resolve(base, [a.name for a in node.names])
            text = ast.unparse(node)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
            and _MODULE_STRING.match(node.value)
            and node.value in known
        ):
            targets = [node.value]
            text = repr(node.value)
            kind = "typing" if kind == "typing" else "lazy"
        for target in targets:
            yield Import(path, getattr(node, "lineno", 0), source, target, text, kind)
        for child in ast.iter_child_nodes(node):
            yield from visit(child, kind)

    for imp in visit(tree, "runtime"):
        if imp.target == top or imp.target.startswith(top + "."):
            yield imp
        elif imp.kind != "lazy":
            yield imp  # a library: kept for the purity rule


@dataclass(frozen=True)
class Violation:
    imp: Import
    rule: str

    def __str__(self) -> str:
        i = self.imp
        try:
            where = i.path.relative_to(ROOT)
        except ValueError:
            where = i.path
        kind = {
            "runtime": "",
            "function": " (inside a function)",
            "lazy": " (lazy, by name)",
            "typing": " (under TYPE_CHECKING)",
        }[i.kind]
        return f"{where}:{i.line}: `{i.text}`{kind}: {self.rule}"


@dataclass(frozen=True)
class Contract:
    layers: Sequence[Layer]
    allowed: Sequence[Allowed]
    pure: Mapping[str, frozenset[str]]

    def layer_of(self, unit: str) -> tuple[int, Layer] | None:
        for rank, layer in enumerate(self.layers):
            if unit in layer.units:
                return rank, layer
        return None

    def row_for(self, imp: Import) -> Allowed | None:
        for row in self.allowed:
            if _covers(row.source, imp.source) and _covers(row.target, imp.target):
                return row
        return None


def _covers(prefix: str, module: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@dataclass
class Report:
    violations: list[Violation]
    used_rows: set[str]
    stale_rows: list[Allowed]


def check(package_dir: Path, contract: Contract) -> Report:
    """Check every module of the package at ``package_dir`` against ``contract``."""
    modules = package_modules(package_dir)
    top = package_dir.name
    found: list[Import] = []
    for path in modules.values():
        found.extend(imports_of(path, package_dir, modules))
    violations: list[Violation] = []
    used: set[str] = set()

    for path in modules.values():  # rule 1 for the importers: every module is placed
        unit = unit_of(module_name(path, package_dir))
        if contract.layer_of(unit) is None:
            imp = Import(
                path, 1, module_name(path, package_dir), "", "(the module itself)", "runtime"
            )
            violations.append(
                Violation(
                    imp, f"unit `{unit}` is in no layer: add it to LAYERS in tests/test_layers.py"
                )
            )

    internal = [i for i in found if i.target == top or i.target.startswith(top + ".")]
    for imp in internal:
        a, b = unit_of(imp.source), unit_of(imp.target)
        if a == b:
            continue
        la, lb = contract.layer_of(a), contract.layer_of(b)
        if la is None or lb is None:
            if lb is None:
                violations.append(Violation(imp, f"`{imp.target}`: unit `{b}` is in no layer"))
            continue
        (ra, layer_a), (rb, layer_b) = la, lb
        row = contract.row_for(imp)
        if row is not None and (rb > ra or (rb == ra and not layer_a.peers_free)):
            used.add(row.name)
            continue
        if rb > ra:
            violations.append(
                Violation(
                    imp,
                    f"{a} ({layer_a.name}) must not import {b} ({layer_b.name}): "
                    f"a higher layer; layers, lowest first: "
                    + " < ".join(layer.name for layer in contract.layers),
                )
            )
        elif rb == ra and not layer_a.peers_free and not imp.typing_only:
            violations.append(
                Violation(
                    imp,
                    f"{a} -> {b}: an arrow between two parts of the {layer_a.name} layer needs "
                    "a named ALLOWED row with a reason (or go through a lower layer)",
                )
            )

    violations.extend(_purity(found, internal, contract.pure, top))
    stale = [row for row in contract.allowed if row.name not in used]
    return Report(violations, used, stale)


def _purity(
    found: Sequence[Import],
    internal: Sequence[Import],
    pure: Mapping[str, frozenset[str]],
    top: str,
) -> Iterator[Violation]:
    runtime_deps: dict[str, set[str]] = {}
    for imp in internal:
        if not imp.typing_only:
            runtime_deps.setdefault(imp.source, set()).add(imp.target)
    for unit, forbidden in pure.items():
        # the package modules a pure unit loads at run time, itself included
        reach: dict[str, str] = {}  # module -> the unit's module that pulls it in
        todo = [(m, m) for m in sorted({i.source for i in found}) if unit_of(m) == unit]
        while todo:
            module, via = todo.pop()
            if module in reach:
                continue
            reach[module] = via
            todo.extend((dep, via) for dep in runtime_deps.get(module, ()))
            parent = module.rpartition(".")[0]
            if parent:  # importing a.b.c runs a/__init__.py and a/b/__init__.py first
                todo.append((parent, via))
        for imp in found:
            lib = imp.target.split(".")[0]
            if lib == top or lib not in forbidden or imp.source not in reach:
                continue
            if unit_of(imp.source) == unit:
                yield Violation(imp, f"{unit} is pure: it imports no I/O library ({lib})")
            elif not imp.typing_only:
                yield Violation(
                    imp,
                    f"{unit} is pure, and {reach[imp.source]} loads {imp.source}, "
                    f"which imports the I/O library {lib}",
                )


THE_CONTRACT = Contract(LAYERS, ALLOWED, PURE)


def _fail_with(violations: Sequence[Violation]) -> None:
    if violations:
        pytest.fail(
            f"{len(violations)} import(s) break the layer contract "
            "(docs/ARCHITECTURE.md, tests/test_layers.py):\n"
            + "\n".join(f"  {v}" for v in violations),
            pytrace=False,
        )


# ------------------------------------------------------------------------ the real tree


def test_layers_hold() -> None:
    _fail_with(check(PACKAGE_DIR, THE_CONTRACT).violations)


def test_every_allowed_row_is_used() -> None:
    stale = check(PACKAGE_DIR, THE_CONTRACT).stale_rows
    assert not stale, "ALLOWED rows no import needs any more (delete them): " + ", ".join(
        f"{r.name} ({r.source} -> {r.target})" for r in stale
    )


def test_tables_are_consistent() -> None:
    seen: dict[str, str] = {}
    for layer in LAYERS:
        for unit in layer.units:
            assert unit not in seen, f"{unit} is in {seen[unit]} and {layer.name}"
            seen[unit] = layer.name
    names = [row.name for row in ALLOWED]
    assert len(names) == len(set(names)), "ALLOWED row names must be unique"
    assert all(row.reason.strip() for row in ALLOWED)


def test_core_is_pure() -> None:
    """Kept also in tests/core/test_purity.py, next to the core it guards."""
    report = check(PACKAGE_DIR, THE_CONTRACT)
    _fail_with([v for v in report.violations if " is pure" in v.rule])


def subpackages(package_dir: Path = PACKAGE_DIR) -> list[Path]:
    return sorted(
        d
        for d in package_dir.rglob("*")
        if d.is_dir() and "__pycache__" not in d.parts and any(d.glob("*.py"))
    )


@pytest.mark.parametrize("pkg", subpackages(), ids=lambda p: p.name)
def test_subpackage_has_a_docstring(pkg: Path) -> None:
    init = pkg / "__init__.py"
    assert init.is_file(), f"{pkg.relative_to(ROOT)} has no __init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
    assert doc, f"{init.relative_to(ROOT)} has no docstring"
    first = doc.strip().splitlines()[0].strip(" .`'\"").lower()
    assert first != pkg.name.lower(), (
        f"{init.relative_to(ROOT)}: the docstring only repeats the name; say what the part "
        "does and what it offers"
    )
    cites = [word for word in ("DESIGN", "shared/") if word in doc]
    assert not cites, (
        f"{init.relative_to(ROOT)}: the docstring cites the external design; the project's "
        "docs stand alone (say it here or in docs/)"
    )


# Modules that stay light: importing them in a fresh interpreter loads none of the listed
# libraries (the CLI, the agents and the edge import them on their hot start-up path).
LIGHT_MODULES: Mapping[str, tuple[str, ...]] = {
    "reconciler.observe.status": ("aiohttp", "prometheus_client", "cryptography"),
    "reconciler.core.plan": ("aiohttp", "yaml", "jsonschema", "cryptography"),
    "reconciler.garden.reader": ("aiohttp",),
    "reconciler.records": ("aiohttp", "yaml", "cryptography"),
    "reconciler.model": ("aiohttp", "yaml", "cryptography"),
    "reconciler.edge.routing": ("aiohttp",),
    "reconciler.testing": ("aiohttp",),
}


@pytest.mark.parametrize("module", sorted(LIGHT_MODULES))
def test_light_modules_import_without_heavy_libraries(module: str) -> None:
    heavy = LIGHT_MODULES[module]
    code = textwrap.dedent(
        f"""
        import sys
        import {module}
        print(",".join(m for m in {heavy!r} if m in sys.modules))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    loaded = out.stdout.strip()
    assert not loaded, f"`import {module}` loads {loaded}"


# ---------------------------------------------------------------- the checker can fail


def _tree(root: Path, files: Mapping[str, str]) -> Path:
    pkg = root / "reconciler"
    for name, body in files.items():
        path = pkg / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(body).lstrip(), encoding="utf-8")
    return pkg


CLEAN = {
    "__init__.py": '"""pkg"""\n',
    "errors.py": "class MycoError(Exception): ...\n",
    "records.py": "from reconciler.errors import MycoError\n",
    "core/__init__.py": '"""core"""\n',
    "core/plan.py": "from reconciler import records\nfrom . import rules\n",
    "core/rules.py": "import dataclasses\n",
    "garden/__init__.py": '"""garden"""\n',
    "garden/reader.py": "import os\nfrom reconciler.records import x\n",
    "agent/__init__.py": '"""agent"""\n',
    "agent/api.py": "import aiohttp\nfrom reconciler.garden import reader\n",
    "edge/__init__.py": '"""edge"""\n',
    "edge/proxy.py": "from reconciler.records import y\n",
    "commands/__init__.py": '"""commands"""\n',
    "commands/a.py": "from reconciler.agent.api import z\nfrom reconciler.edge import proxy\n",
    "cli.py": "from reconciler.commands import a\n",
}


def _messages(root: Path, extra: Mapping[str, str], contract: Contract = THE_CONTRACT) -> list[str]:
    return [str(v) for v in check(_tree(root, {**CLEAN, **extra}), contract).violations]


def test_checker_passes_a_clean_tree(tmp_path: Path) -> None:
    assert _messages(tmp_path, {}) == []


CATCHES: list[tuple[str, dict[str, str], str]] = [
    (
        "upward from the bottom",
        {"errors.py": "import json\n\n\ndef f():\n    from reconciler.core import plan\n"},
        "reconciler/errors.py:5: `from reconciler.core import plan` (inside a function): "
        "errors (bottom) must not import core (domain): a higher layer",
    ),
    (
        "a domain part imports a service",
        {"garden/reader.py": "from reconciler.agent.api import serve\n"},
        "reconciler/garden/reader.py:1: `from reconciler.agent.api import serve`: "
        "garden (domain) must not import agent (services)",
    ),
    (
        "a service imports the commands",
        {"edge/proxy.py": "import reconciler.commands.a\n"},
        "reconciler/edge/proxy.py:1: `import reconciler.commands.a`: "
        "edge (services) must not import commands (commands)",
    ),
    (
        "the commands import the cli",
        {"commands/a.py": "from reconciler import cli\n"},
        "reconciler/commands/a.py:1: `from reconciler import cli`: "
        "commands (commands) must not import cli (entry)",
    ),
    (
        "service to service without a row",
        {"edge/proxy.py": "from reconciler.agent import api\n"},
        "reconciler/edge/proxy.py:1: `from reconciler.agent import api`: edge -> agent: "
        "an arrow between two parts of the services layer needs a named ALLOWED row",
    ),
    (
        "typing-only upward",
        {
            "core/rules.py": "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from reconciler.agent.api import Agent\n"
        },
        "reconciler/core/rules.py:3: `from reconciler.agent.api import Agent` "
        "(under TYPE_CHECKING): core (domain) must not import agent (services)",
    ),
    (
        "lazy import by name",
        {"core/rules.py": '_LAZY = {"Agent": "reconciler.agent.api"}\n'},
        "reconciler/core/rules.py:1: `'reconciler.agent.api'` (lazy, by name): "
        "core (domain) must not import agent (services)",
    ),
    (
        "core imports an I/O library",
        {"core/rules.py": "def f():\n    import asyncio\n"},
        "reconciler/core/rules.py:2: `import asyncio` (inside a function): "
        "core is pure: it imports no I/O library (asyncio)",
    ),
    (
        "core reaches an I/O library through a helper",
        {"records.py": "import logging\nfrom reconciler.errors import MycoError\n"},
        "reconciler/records.py:1: `import logging`: core is pure, and reconciler.core.plan "
        "loads reconciler.records, which imports the I/O library logging",
    ),
    (
        "core reaches an I/O library through a package __init__",
        {"__init__.py": '"""pkg"""\nimport logging\n'},
        "reconciler/__init__.py:2: `import logging`: core is pure, and ",
    ),
    (
        "a module in no layer",
        {"gadget.py": "from reconciler import errors\n"},
        "reconciler/gadget.py:1: `(the module itself)`: unit `gadget` is in no layer",
    ),
]


@pytest.mark.parametrize(("name", "files", "expected"), CATCHES, ids=[c[0] for c in CATCHES])
def test_checker_catches(tmp_path: Path, name: str, files: dict[str, str], expected: str) -> None:
    messages = _messages(tmp_path, files)
    rel = [m.replace(str(tmp_path) + "/", "") for m in messages]
    assert any(m.startswith(expected) for m in rel), f"{name}: {rel}"


def test_typing_only_import_may_point_sideways(tmp_path: Path) -> None:
    files = {
        "edge/proxy.py": "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from reconciler.agent.api import Agent\n"
    }
    assert _messages(tmp_path, files) == []


def test_a_row_allows_an_arrow_and_goes_stale_without_it(tmp_path: Path) -> None:
    row = Allowed("edge-uses-agent", "reconciler.edge.proxy", "reconciler.agent.api", "test")
    contract = Contract(LAYERS, (row,), PURE)
    pkg = _tree(tmp_path / "with", {**CLEAN, "edge/proxy.py": "from reconciler.agent import api\n"})
    report = check(pkg, contract)
    assert report.violations == []
    assert report.stale_rows == []
    report = check(_tree(tmp_path / "without", CLEAN), contract)
    assert report.stale_rows == [row]


def test_the_real_tree_fails_a_deliberate_violation(tmp_path: Path) -> None:
    """The real tables against a copy of one real module plus a bad import."""
    source = (PACKAGE_DIR / "core" / "ledger.py").read_text(encoding="utf-8")
    pkg = _tree(
        tmp_path,
        {**CLEAN, "core/ledger.py": source + "\n\nfrom reconciler.commands import a\n"},
    )
    messages = [str(v) for v in check(pkg, THE_CONTRACT).violations]
    assert any("core (domain) must not import commands (commands)" in m for m in messages)


# ------------------------------------------------------------ the index of shipped fakes


def _testing_all() -> list[str]:
    tree = ast.parse((PACKAGE_DIR / "testing.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            assert isinstance(value, list)
            return [str(v) for v in value]
    raise AssertionError("reconciler/testing.py has no __all__")


@pytest.mark.parametrize("name", _testing_all())
def test_every_shipped_fake_resolves(name: str) -> None:
    import reconciler.testing

    assert getattr(reconciler.testing, name) is not None


def test_testing_names_no_more_than_it_exports() -> None:
    import reconciler.testing

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = reconciler.testing.Nope
