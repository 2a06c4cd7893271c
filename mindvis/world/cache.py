"""The cached synthetic world: generated into the cache folder on first use, keyed by its settings."""
from __future__ import annotations

import os
from pathlib import Path

from mindvis.utils.cache import default_cache_dir

from .config import SyntheticWorldConfig
from .synthetic_world import SyntheticWorld


def ensure_world(cfg: SyntheticWorldConfig | None = None, parts=("hcp", "god", "bold5000"),
                 cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached world for ``cfg`` (generated on first use); returns its root folder."""
    cfg = cfg or SyntheticWorldConfig()
    root = Path(cache_dir or default_cache_dir()) / "synthetic" / cfg.fingerprint()
    return SyntheticWorld(cfg).write(root, parts)
