"""Settings of ``mindvis-scaling``: the grid, and the ``mindvis-align`` settings every cell shares."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from mindvis.align.config import AlignConfig

#: decoder arms: ridge, MindEye's MLP, the SC-MBM encoder random, pretrained on rest (stage A1) or pretrained on
#: the target dataset's own fMRI only (stage A2 alone: the question of mind-vis issue #8), and Meta's brain module
#: (M/EEG datasets)
ARMS = ("ridge", "mlp", "mbm-random", "mbm-rest", "mbm-target", "brain-module")
#: the subjects axis (decoder mlp-shared): every subject's pairs fixed, or the total over subjects fixed
SUBJECT_MODES = ("per-subject", "total")


@dataclass
class GridConfig:
    fractions: List[float] = field(default_factory=lambda: [0.125, 0.25, 0.5, 1.0])  # of the training pairs
    trials: List[int] = field(default_factory=list)  # explicit training-pair counts (replace fractions)
    arms: List[str] = field(default_factory=lambda: ["ridge", "mlp", "mbm-random"])
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    rest_encoder: str = ""  # mbm-rest: a stage-A run / model folder / original .pth pretrained on rest
    target_encoder: str = ""  # mbm-target: one pretrained on the target dataset's fMRI alone
    bootstrap: int = 1000  # resamples of the seeds for the slopes' confidence intervals
    # the subjects axis: mlp-shared (per-subject adapters, one backbone) trained on the first S subjects, tested on
    # the first; empty: no subjects axis
    subjects: List[int] = field(default_factory=list)
    subject_modes: List[str] = field(default_factory=lambda: ["per-subject", "total"])
    subject_trials: int = 0  # pairs per subject (per-subject) or in all (total); 0: one subject's training split
    subject_ids: List[str] = field(default_factory=list)  # GOD-layout subjects; empty: sbj_1, sbj_2, ...


@dataclass
class ScalingConfig:
    grid: GridConfig = field(default_factory=GridConfig)
    cell: AlignConfig = field(default_factory=AlignConfig)
    output_dir: str = "runs/scaling"
