"""The tree reads as the pipeline (docs/design.md "Code overview"): the folders of stale_cli are its stages, in
order, the modules at the top are the base they share, and no import runs back up the pipeline."""

from __future__ import annotations

import ast
from pathlib import Path

import stale_cli

PACKAGE = Path(stale_cli.__file__).parent
STAGES = ("features", "model", "detection", "evaluation", "report", "cli")  # pipeline order, after the base


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage(module: str) -> int:
    """0 for the base (``stale_cli`` and the modules at its top), else 1 + the index of the module's stage."""
    if module == "stale_cli.__main__":  # ``python -m stale_cli``: the command line's entry point
        return len(STAGES)
    parts = module.split(".")
    return 1 + STAGES.index(parts[1]) if len(parts) > 1 and parts[1] in STAGES else 0


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every stale_cli import in the file, in functions too. ``from stale_cli import x`` counts as
    ``stale_cli.x``: x may be a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: a relative import (the rule reads absolute ones)"
            if node.module == "stale_cli":
                found += [(node.lineno, f"stale_cli.{a.name}") for a in node.names]
            elif node.module.startswith("stale_cli."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "stale_cli"]
    return found


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_the_packages_of_stale_cli_are_the_stages():
    packages = {p.parent.relative_to(PACKAGE).parts[0] for p in PACKAGE.glob("*/__init__.py")}
    assert packages == set(STAGES)


def test_no_import_runs_back_up_the_pipeline():
    back = []
    for module, path in modules().items():
        for line, target in imported(path):
            if stage(target) > stage(module):
                back.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module} imports {target}")
    assert not back, "\n".join(back)


def test_no_import_cycle_between_modules():
    known = modules()

    def resolve(target: str) -> str | None:
        while target and target not in known:  # stale_cli.x.Name -> stale_cli.x
            target = target.rpartition(".")[0]
        return target or None

    graph = {m: {t for _, imp in imported(p) if (t := resolve(imp)) not in (None, m)} for m, p in known.items()}
    for package in {m for m, p in known.items() if p.name == "__init__.py"}:
        for m in graph:  # a package's __init__ may import its own submodules: they are one unit with it
            if m.startswith(package + "."):
                graph[m].discard(package)
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            assert state.get(t) != 1, "import cycle: " + " -> ".join(path[path.index(t):] + [m, t])
            if t not in state:
                visit(t, path + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
