"""Where mindvis keeps what it prepares, generates or trains once (prepared arrays, the synthetic world, priors,
classifiers, embeddings)."""
from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    return Path(os.environ.get("MINDVIS_CACHE", Path.home() / ".cache" / "mindvis"))
