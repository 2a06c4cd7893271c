"""Shared helpers of the MindEye fixture generators (run in a reference venv, not mindvis').

A reference is a checkout folder or a bare git dir; files are read from it at run time, never copied into
mindvis. Notebook cells are read from the .ipynb JSON.
"""
from __future__ import annotations

import ast
import json
import subprocess
from pathlib import Path


class Reference:
    """Read files of a reference checkout (``root/src/...``) or a bare git dir (``HEAD:src/...``)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.bare = not (self.path / "src").is_dir()
        if self.bare and not (self.path / "HEAD").is_file():
            raise SystemExit(f"{path}: neither a checkout (src/ folder) nor a bare git dir")

    def commit(self) -> str:
        if self.bare:
            return subprocess.check_output(["git", f"--git-dir={self.path}", "rev-parse", "HEAD"], text=True).strip()
        try:
            return subprocess.check_output(["git", "-C", str(self.path), "rev-parse", "HEAD"], text=True).strip()
        except Exception:
            return "unknown"

    def read(self, rel: str) -> str:
        if self.bare:
            return subprocess.check_output(["git", f"--git-dir={self.path}", "show", f"HEAD:{rel}"], text=True)
        return (self.path / rel).read_text()

    def list(self, prefix: str) -> list[str]:
        if self.bare:
            out = subprocess.check_output(["git", f"--git-dir={self.path}", "ls-tree", "-r", "--name-only", "HEAD",
                                           prefix], text=True)
            return out.split()
        return [str(p.relative_to(self.path)) for p in (self.path / prefix).rglob("*") if p.is_file()]

    def extract(self, prefix: str, dest: Path, suffixes=(".py", ".yaml", ".json")) -> Path:
        """Write the files under ``prefix`` with the given suffixes to ``dest`` (same relative paths)."""
        for rel in self.list(prefix):
            if rel.endswith(suffixes):
                out = dest / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(self.read(rel))
        return dest

    def notebook_cells(self, rel: str) -> list[str]:
        """Source of each code cell of a notebook."""
        nb = json.loads(self.read(rel))
        return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def definitions(source: str, names: list[str]) -> str:
    """The source of the top-level functions/classes ``names`` of a module (in file order)."""
    tree = ast.parse(source)
    found = {n.name: ast.get_source_segment(source, n) for n in tree.body
             if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in names}
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(f"the reference no longer defines {missing}")
    return "\n\n".join(found[n] for n in names)


def cell_containing(cells: list[str], needle: str) -> str:
    hits = [c for c in cells if needle in c]
    if len(hits) != 1:
        raise SystemExit(f"expected one notebook cell containing {needle!r}, found {len(hits)}")
    return hits[0]
