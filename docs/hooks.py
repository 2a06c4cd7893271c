"""mkdocs hooks: let mkdocstrings find every mindvis module, and fail the build when a module has no API page.

mindvis installs its stages from top-level folders (``align/`` is ``mindvis.align``, see setup.cfg's
``package_dir``), which a static reader of the source tree cannot see. ``on_config`` lays out the import tree as
links under ``build/docs-api/`` for mkdocstrings (``paths`` in mkdocs.yml) and checks that every module of it is
documented by a ``::: module`` line in ``docs/api/``.
"""
from __future__ import annotations

import configparser
import os
import re
import shutil
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority

ROOT = Path(__file__).resolve().parent.parent
API_TREE = ROOT / "build" / "docs-api"


def _package_dirs() -> dict[str, Path]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    mapped = {}
    for line in cfg["options"]["package_dir"].strip().splitlines():
        name, _, folder = (part.strip() for part in line.partition("="))
        mapped[name] = ROOT / folder
    return mapped


def _link_tree() -> None:
    if API_TREE.exists():
        shutil.rmtree(API_TREE)
    top = API_TREE / "mindvis"
    top.mkdir(parents=True)
    for item in (ROOT / "mindvis").iterdir():
        (top / item.name).symlink_to(item)
    for name, folder in _package_dirs().items():
        (top / name.split(".", 1)[1]).symlink_to(folder)


def _modules() -> set[str]:
    found = set()
    for folder, dirs, files in os.walk(API_TREE / "mindvis", followlinks=True):
        dirs[:] = [d for d in dirs if d != "__pycache__" and (Path(folder) / d / "__init__.py").is_file()]
        package = Path(folder).relative_to(API_TREE).parts
        found |= {".".join(package + ((f[:-3],) if f != "__init__.py" else ())) for f in files if f.endswith(".py")}
    return found


@event_priority(100)  # before mkdocstrings, which resolves its `paths` (build/docs-api) when it starts
def on_config(config, **kwargs):
    _link_tree()
    documented = set()
    for page in (ROOT / "docs" / "api").glob("*.md"):
        documented |= set(re.findall(r"^:::\s*([\w.]+)", page.read_text(), flags=re.M))
    missing = sorted(_modules() - documented)
    if missing:
        raise PluginError(f"modules without an API page (add a '::: name' line to a page in docs/api/): {missing}")
    unknown = sorted(documented - _modules())
    if unknown:
        raise PluginError(f"docs/api/ documents modules that do not exist: {unknown}")
    return config
