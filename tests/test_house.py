"""The house rules, checked on the code: one namespace, contracts at the bottom, arrows pointing down."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("rewards", "benchmarks", "harness")
# The contract modules: what rewards, benchmarks, trainers and the app layer all build on.
CONTRACTS = ("sample", "reward", "benchmark", "generator", "registry", "errors", "images", "store", "data",
             "data_files", "seeding", "manifest", "scorer", "nlp", "qwen_vl", "optional", "progress",
             "hub_errors", "quiet", "trainer", "settings_diff")
# No room imports another: benchmarks and the app layer reach rewards (and trainers) by registered name.
FORBIDDEN = {room: tuple(other for other in ROOMS if other != room) for room in ROOMS}


def _nodes(tree: ast.AST, *, into_functions: bool) -> list[ast.AST]:
    """Every node of ``tree``; without ``into_functions``, only what runs when the module is imported."""
    found, stack = [], [tree]
    while stack:
        node = stack.pop()
        found.append(node)
        stack.extend(child for child in ast.iter_child_nodes(node)
                     if into_functions or not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef))
    return found


def imported_modules(path: Path, *, module_level_only: bool = False) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included unless
    ``module_level_only``), made absolute."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = "evalsuite" if path.parent.name == "evalsuite" else f"evalsuite.{path.parent.name}"
    found: set[str] = set()
    for node in _nodes(tree, into_functions=not module_level_only):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("name", CONTRACTS)
def test_contract_modules_import_nothing_above_them(name):
    imports = imported_modules(ROOT / "evalsuite" / f"{name}.py")
    allowed = {f"evalsuite.{c}" for c in CONTRACTS}
    upward = sorted(m for m in imports
                    if m.split(".")[0] in ROOMS
                    or (m.startswith("evalsuite.") and ".".join(m.split(".")[:2]) not in allowed
                        and m not in {"evalsuite"}))
    assert not upward, f"evalsuite/{name}.py imports above the contracts: {upward}"


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_rooms_do_not_import_each_other(room):
    crossing = sorted(
        f"{path.name}: {m}"
        for path in sorted((ROOT / room).glob("*.py"))
        for m in imported_modules(path)
        if any(m == f"evalsuite.{other}" or m.startswith(f"evalsuite.{other}.") for other in FORBIDDEN[room])
    )
    assert not crossing, f"{room}/ imports another room: {crossing}"


def test_the_checker_sees_an_upward_import(tmp_path):
    """The walk above must catch function-level and relative imports, or it proves nothing."""
    pkg = tmp_path / "evalsuite"
    pkg.mkdir()
    (pkg / "sample.py").write_text("def f():\n    from .rewards import pickscore\n    import harness.train\n")
    found = imported_modules(pkg / "sample.py")
    assert {"evalsuite.rewards", "harness.train"} <= found


def test_the_module_level_walk_skips_function_bodies_only(tmp_path):
    pkg = tmp_path / "tiny"
    pkg.mkdir()
    (pkg / "w.py").write_text("import torch\nclass A:\n    from ..rewards import clipscore\n"
                              "def f():\n    from evalsuite.rewards import pickscore\n")
    found = imported_modules(pkg / "w.py", module_level_only=True)
    assert {"torch", "evalsuite.rewards.clipscore"} <= found
    assert "evalsuite.rewards.pickscore" not in found


@pytest.mark.parametrize("path", sorted((ROOT / "rewards").glob("*.py")), ids=lambda p: p.name)
def test_rewards_import_no_other_room_nor_the_tiny_kit(path):
    """A reward file holds the reward: tiny-checkpoint writers, benchmarks and trainers live elsewhere."""
    banned = ("evalsuite.tiny", "evalsuite.benchmarks", "evalsuite.harness")
    found = sorted(m for m in imported_modules(path) if m.startswith(banned) or m.split(".")[0] in ROOMS)
    assert not found, f"rewards/{path.name} imports {found}"


@pytest.mark.parametrize("path", sorted((ROOT / "evalsuite" / "tiny").glob("*.py")), ids=lambda p: p.name)
def test_tiny_kit_imports_no_reward_at_module_level(path):
    """The tiny kit reaches a reward's format constants by "module:attr" string at call time."""
    found = sorted(m for m in imported_modules(path, module_level_only=True)
                   if m.startswith("evalsuite.rewards") or m.split(".")[0] == "rewards")
    assert not found, f"evalsuite/tiny/{path.name} imports {found} at module level"


def test_rooms_are_not_top_level_packages_after_install(tmp_path):
    """One namespace: ``import rewards`` from a neutral folder fails, the new paths import."""
    code = (
        "import importlib, importlib.util\n"
        "for name in ('rewards', 'benchmarks', 'harness'):\n"
        "    assert importlib.util.find_spec(name) is None, name\n"
        "for name in ('evalsuite.rewards.pickscore', 'evalsuite.benchmarks.geneval',\n"
        "             'evalsuite.harness.sde'):\n"
        "    importlib.import_module(name)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_app_layer_reaches_the_rooms_by_registered_name():
    """No module of evalsuite/ (CLI, runner, demo, server, tiny kit, …) imports rewards, benchmarks or
    harness: it asks the registry for them by name."""
    crossing = sorted(
        f"{path.relative_to(ROOT)}: {m}"
        for path in sorted((ROOT / "evalsuite").rglob("*.py"))
        for m in imported_modules(path)
        if any(m == f"evalsuite.{room}" or m.startswith(f"evalsuite.{room}.") for room in ROOMS)
    )
    assert not crossing, f"evalsuite/ imports a room directly: {crossing}"


TRAINERS = ("harness/train.py", "harness/flow_train.py")


def _python_files() -> list[Path]:
    return sorted(p for folder in ("evalsuite", *ROOMS, "tests") for p in (ROOT / folder).rglob("*.py")
                  if "__pycache__" not in p.parts)


def test_no_module_is_too_long():
    """≤ 500 lines a module, ≤ 600 a test module: a file that long does more than one job."""
    too_long = []
    for path in _python_files():
        rel = path.relative_to(ROOT).as_posix()
        limit = 600 if rel.startswith("tests/") else 500
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > limit:
            too_long.append(f"{rel}: {lines} > {limit}")
    assert not too_long, too_long


@pytest.mark.parametrize("rel", TRAINERS)
def test_each_trainer_is_a_short_loop(rel):
    """A trainer file reads top to bottom (config → setup → loop → export); the rest is in the scaffold."""
    lines = len((ROOT / rel).read_text(encoding="utf-8").splitlines())
    assert lines <= 400, f"{rel}: {lines} lines"


def test_the_flow_trainer_imports_nothing_from_the_rewriter_trainer():
    """Shared pieces live in the run scaffold (harness/scaffold.py), not in another trainer's loop."""
    found = sorted(m for m in imported_modules(ROOT / "harness" / "flow_train.py")
                   if m == "evalsuite.harness.train" or m.startswith("evalsuite.harness.train."))
    assert not found, found
