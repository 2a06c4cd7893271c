"""The ``meta.json`` every part of the synthetic world ends with: the generator's mark, the part and the settings."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from mindvis.releases import SYNTHETIC_GENERATOR

from ..config import SyntheticWorldConfig


def write_meta(folder: Path, part: str, cfg: SyntheticWorldConfig) -> None:
    meta = {"generator": SYNTHETIC_GENERATOR, "part": part, "config": asdict(cfg),
            "fingerprint": cfg.fingerprint()}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
