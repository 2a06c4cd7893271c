"""A torch Dataset over per-subject fMRI arrays (in RAM or memory-mapped) for masked brain modeling."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .fmri import fit_length, interpolation_pairs


class FMRIDataset(Dataset):
    """Samples ``{'fmri': (1, num_voxels) float32}`` from a list of (samples, voxels) arrays.

    Arrays are fitted to ``num_voxels`` on access (wrap-padding or truncation, as the original does
    when it mixes datasets), so memory-mapped arrays are never copied whole. With ``aug_times > 1``
    the interpolation augmentation appends ``(aug_times - 1) * N`` midpoints of random sample pairs,
    computed on access from a fixed, seeded list of pairs.
    """

    def __init__(self, arrays: Sequence[np.ndarray], num_voxels: int, aug_times: int = 1, seed: int = 0,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 rows: Sequence[tuple[int, int]] | None = None):
        self.arrays = list(arrays)
        self.num_voxels = num_voxels
        self.rows = np.array(rows if rows is not None else
                             [(a, r) for a, arr in enumerate(self.arrays) for r in range(len(arr))],
                             dtype=np.int64).reshape(-1, 2)
        if len(self.rows) == 0:
            raise ValueError("FMRIDataset has no samples")
        self.pairs = interpolation_pairs(len(self.rows), aug_times, np.random.default_rng(seed))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows) + len(self.pairs)

    def raw(self, index: int) -> np.ndarray:
        """The fitted (num_voxels,) float32 vector of a real (not augmented) sample."""
        a, r = self.rows[index]
        return fit_length(np.array(self.arrays[a][r], dtype=np.float32), self.num_voxels)  # a writable copy

    def __getitem__(self, index: int) -> dict:
        if index < len(self.rows):
            x = self.raw(index)
        else:
            i, j = self.pairs[index - len(self.rows)]
            x = 0.5 * (self.raw(i) + self.raw(j))
        x = torch.from_numpy(x).unsqueeze(0)  # (1, V)
        if self.transform is not None:
            x = self.transform(x)
        return {"fmri": x}

    def subset(self, indices: Sequence[int], aug_times: int = 1, seed: int = 0, transform=None) -> "FMRIDataset":
        """A dataset over some real samples of this one (for train / held-out splits)."""
        return FMRIDataset(self.arrays, self.num_voxels, aug_times, seed, transform, self.rows[np.asarray(indices)])
