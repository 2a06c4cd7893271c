"""The package's layout: setup.cfg lists every package, no import circle among mindvis' modules (imports at the top
and inside functions both count), and the readers (mindvis.data) and the synthetic world (mindvis.world) never
import each other."""
from __future__ import annotations

import ast
import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def packages() -> dict[str, Path]:
    """Package name -> folder, as setup.cfg installs them."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    mapped = {"mindvis": ROOT / "mindvis"}
    for line in cfg["options"]["package_dir"].strip().splitlines():
        name, folder = (s.strip() for s in line.split("="))
        mapped[name] = ROOT / folder
    out = {}
    for pkg in cfg["options"]["packages"].split():
        parts = pkg.split(".")
        base = max((p for p in mapped if pkg == p or pkg.startswith(p + ".")), key=len)
        out[pkg] = mapped[base].joinpath(*parts[len(base.split(".")):])
    return out


def modules() -> dict[str, Path]:
    out = {}
    for pkg, folder in packages().items():
        for f in sorted(folder.glob("*.py")):
            out[pkg if f.stem == "__init__" else f"{pkg}.{f.stem}"] = f
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the mindvis modules it imports anywhere in its text."""
    mods = modules()

    def known(name: str) -> str | None:
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in mods:
                return ".".join(parts[:i])
        return None

    graph = {}
    for mod, path in mods.items():
        here = mod.split(".") if path.stem == "__init__" else mod.split(".")[:-1]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else node.module
                targets |= {base} | {f"{base}.{a.name}" for a in node.names}
        graph[mod] = {k for k in map(known, targets) if k and k != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_setup_cfg_lists_every_package():
    listed = {p.resolve() for p in packages().values()}
    folders = {ROOT / "mindvis"} | {p.parent for p in (ROOT / "mindvis").rglob("__init__.py")}
    folders |= {p.parent for d in ("pretrain", "finetune", "align", "scaling", "data_prep", "configs")
                for p in (ROOT / d).rglob("__init__.py")}
    missing = sorted(str(f.relative_to(ROOT)) for f in folders if f.resolve() not in listed)
    assert not missing, f"packages missing from setup.cfg: {missing}"


def test_no_import_circle():
    assert cycles(import_graph()) == []


def test_readers_and_world_apart():
    inside = lambda m, pkg: m == pkg or m.startswith(pkg + ".")
    graph = import_graph()
    crossing = [(a, b) for a, targets in graph.items() for b in targets
                if (inside(a, "mindvis.data") and inside(b, "mindvis.world"))
                or (inside(a, "mindvis.world") and inside(b, "mindvis.data"))]
    assert crossing == []
