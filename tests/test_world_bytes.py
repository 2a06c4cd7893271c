"""The synthetic world writes the same bytes as when ``fixtures/world_hashes.json`` was recorded.

A small world with every part (seconds to write) is hashed file by file. ``nsd_expdesign.mat`` carries the time of
writing in its header (scipy's savemat), so its arrays are hashed instead of its bytes. Regenerate the record only
when the world is meant to change: ``python -m tests.test_world_bytes``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .conftest import TINY_WORLD

RECORD = Path(__file__).parent / "fixtures" / "world_hashes.json"
PARTS = ("hcp", "god", "bold5000", "nsd", "things-meg", "things-eeg2")
WORLD = {**TINY_WORLD, "nsd_sessions": 2, "nsd_shared": 20, "nsd_volume": [8, 8, 8],
         "nsd_voxels": [20, 16, 12, 12, 8, 8, 8], "meg_sensors": 12, "meg_sfreq": 200.0, "meg_runs": 2,
         "meeg_test_repeats": 3, "eeg_train_repeats": 2, "meeg_sources_per_area": 2}
#: files whose bytes hold the time of writing: compared by content
TIMESTAMPED = ("NSD/nsddata/experiments/nsd/nsd_expdesign.mat",)


def mat_content_hash(path: Path) -> str:
    """sha256 of a .mat file's variables (name, dtype, shape, data), its header left out."""
    from scipy.io import loadmat

    h = hashlib.sha256()
    for name, value in sorted(loadmat(path).items()):
        if name.startswith("__"):
            continue
        h.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def world_hashes(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` (content hashes for the ``TIMESTAMPED`` files)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            out[rel] = mat_content_hash(p) if rel in TIMESTAMPED else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def write_world(root: Path) -> Path:
    from mindvis.world import SyntheticWorld, SyntheticWorldConfig

    return SyntheticWorld(SyntheticWorldConfig(**WORLD)).write(root, PARTS)


def test_world_writes_the_recorded_bytes(tmp_path):
    got = world_hashes(write_world(tmp_path / "world"))
    want = json.loads(RECORD.read_text())
    assert sorted(got) == sorted(want), "the world writes other files than recorded"
    changed = [k for k in want if got[k] != want[k]]
    assert not changed, f"{len(changed)} files differ from the recorded world, e.g. {changed[:5]}"


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        RECORD.write_text(json.dumps(world_hashes(write_world(Path(d) / "world")), indent=1) + "\n")
    print(f"recorded {RECORD}")
