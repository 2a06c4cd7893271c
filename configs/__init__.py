"""YAML presets shipped with mindvis; :func:`preset_path` finds one by name."""
from pathlib import Path


def preset_path(stage: str, name: str) -> Path:
    """``configs/<stage>/<name>.yaml`` for a bare name; any other string is taken as a file path."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        return Path(name)
    return Path(__file__).parent / stage / f"{name}.yaml"


def preset_names(stage: str) -> list[str]:
    return sorted(p.stem for p in (Path(__file__).parent / stage).glob("*.yaml"))
