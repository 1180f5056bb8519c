"""Imports run one way: drivers -> hub and runner -> dialects and core -> audio and ``vad/``. No cycle.

Read from the source with ``ast`` (every import counts: inside functions and under
``TYPE_CHECKING`` too), so a cycle fails here before it can fail anywhere else.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent
PACKAGES = ("vad", "wsstream")

# Lower layers never import higher ones. Unlisted wsstream modules are drivers (the top).
LAYERS = {
    "vad": 0,
    "wsstream.codecs": 1, "wsstream.resample": 1, "wsstream.history": 1, "wsstream.playout": 1,
    "wsstream.metrics": 1, "wsstream.config": 1, "wsstream.events": 1, "wsstream.reply": 1, "wsstream.echo": 1,
    "wsstream.wsframes": 1, "wsstream.web": 1, "wsstream.spotter": 1, "wsstream.stopwords": 1,
    "wsstream.echogate": 1, "wsstream.logs": 1,
    "wsstream.core": 2, "wsstream.inference": 2, "wsstream.dialects": 2,
    "wsstream.runner": 3,
    "wsstream.hub": 4,
}
DRIVER = 5


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            # ``from pkg import mod`` imports the module; ``from pkg import name`` imports pkg
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            # the longest known module this names (``from wsstream.dialects import native`` -> the submodule)
            while target and target not in known:
                target = target.rpartition(".")[0]
            # (importing a submodule runs its parents' __init__ first: that is not an edge back up)
            if target and target != name and not name.startswith(target + "."):
                out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def layer(name: str) -> int:
    while name:
        if name in LAYERS:
            return LAYERS[name]
        name = name.rpartition(".")[0]
    return DRIVER


def test_no_import_cycle() -> None:
    edges = graph()
    # the package __init__ files re-export their modules: an edge into a package means its __init__
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt):], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_imports_go_one_way() -> None:
    wrong = sorted(f"{src} (layer {layer(src)}) imports {dst} (layer {layer(dst)})"
                   for src, dsts in graph().items() for dst in dsts
                   if layer(dst) > layer(src) and src != "wsstream")
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_a_cycle(tmp_path: Path) -> None:
    """The checker itself can fail: two modules importing each other are caught."""
    (tmp_path / "a.py").write_text("from b import x\n")
    (tmp_path / "b.py").write_text("import typing\nif typing.TYPE_CHECKING:\n    import a\n")
    known = {"a", "b"}
    edges = {n: imports_of(n, tmp_path / f"{n}.py", known) for n in known}
    assert edges == {"a": {"b"}, "b": {"a"}}


def test_public_api_is_exported_and_typed() -> None:
    import inspect

    import wsstream

    assert sorted(wsstream.__all__) == sorted(n for n in vars(wsstream) if not n.startswith("_")
                                              and not inspect.ismodule(getattr(wsstream, n))), \
        "wsstream/__init__.py exports its public API and nothing else"
    for name in wsstream.__all__:
        obj = getattr(wsstream, name)
        if inspect.isfunction(obj):
            hints = obj.__annotations__
            assert "return" in hints, f"{name} has no return annotation"
