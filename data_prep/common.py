"""What every preparation shares: resumable per-item outputs, the meta.json record, input checks."""
from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Callable

import numpy as np

from mindvis.data.fmri import DataError, error_summary
from mindvis.utils.io import atomic_dir, atomic_write_json


def versions() -> dict:
    import nibabel

    import mindvis

    out = {"mindvis": mindvis.__version__, "numpy": np.__version__, "nibabel": nibabel.__version__,
           "python": platform.python_version()}
    try:
        import h5py

        out["h5py"] = h5py.__version__
    except ImportError:
        pass
    return out


def done(folder: Path) -> bool:
    """A finished item folder carries ``.done`` (written inside the temporary folder before its rename)."""
    return (folder / ".done").is_file()


def write_item(folder: Path, fill: Callable[[Path], dict]) -> dict:
    """Write one subject's folder atomically: ``fill(tmp)`` writes the files and returns its meta record."""
    record = {}

    def _fill(tmp: Path):
        record.update(fill(tmp))
        atomic_write_json(tmp / ".done", record)

    atomic_dir(folder, _fill)
    return record


def item_record(folder: Path) -> dict:
    return json.loads((folder / ".done").read_text())


def write_meta(out: Path, kind: str, sources: dict, items: dict, settings: dict, extra: dict | None = None) -> None:
    """``out/meta.json``: what was prepared, from what, with which settings; ``extra`` adds keys readers need."""
    atomic_write_json(out / "meta.json", {"preparation": kind, "sources": sources, "settings": settings,
                                          "items": items, "versions": versions(), **(extra or {})})


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    return path


def load_image(path, what: str = "NIfTI"):
    """A nibabel image, or a one-line DataError naming the file (nibabel raises many error types for bad files)."""
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception as e:  # noqa: BLE001 - ImageFileError, OSError, EOFError, ValueError, ...
        raise DataError(f"{path}: not a readable {what} file ({error_summary(e)})") from None
