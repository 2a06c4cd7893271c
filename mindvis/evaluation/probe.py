"""Linear probing of fMRI representations: how much of the stimulus a ridge regression reads out of them.

The MAE way to judge a pretrained encoder apart from the decoder trained on top of it: freeze the features
(SC-MBM tokens, or the raw voxels as the baseline), fit ridge regression from training fMRI to the stimulus
pixels, and score held-out predictions by pixel-correlation identification (0.5 = chance). The ridge penalty
is chosen on the validation split; the test split is scored once with it.
"""
from __future__ import annotations

import numpy as np
import torch

from .metrics import identification, pairwise_pcc

PENALTIES = (1e1, 1e2, 1e3, 1e4, 1e5)


def ridge_fit_predict(train_x: np.ndarray, train_y: np.ndarray, eval_x: list[np.ndarray],
                      penalty: float) -> list[np.ndarray]:
    """Ridge regression (features z-scored on training data; dual form, cheap when features outnumber samples)."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    a = (train_x - mu) / sd
    y_mean = train_y.mean(0)
    alpha = np.linalg.solve(a @ a.T + penalty * np.eye(len(a)), train_y - y_mean)
    w = a.T @ alpha
    return [((x - mu) / sd) @ w + y_mean for x in eval_x]


def probe_identification(features: dict[str, np.ndarray], targets: dict[str, np.ndarray],
                         penalties=PENALTIES) -> dict:
    """``features``/``targets`` per split (train, val, test; rows aligned): the validation-chosen penalty and
    the pixel-correlation identification of the ridge read-out on val and test."""
    for split in ("train", "val", "test"):
        if len(features[split]) != len(targets[split]):
            raise ValueError(f"{split}: {len(features[split])} feature rows but {len(targets[split])} targets")
    f = {k: np.asarray(v, np.float64).reshape(len(v), -1) for k, v in features.items()}
    t = {k: np.asarray(v, np.float64).reshape(len(v), -1) for k, v in targets.items()}

    def score(pred, split):
        return float(identification(pairwise_pcc(torch.from_numpy(pred), torch.from_numpy(t[split]))).mean())

    val = {lam: score(ridge_fit_predict(f["train"], t["train"], [f["val"]], lam)[0], "val") for lam in penalties}
    best = max(val, key=val.get)
    test = score(ridge_fit_predict(f["train"], t["train"], [f["test"]], best)[0], "test")
    return {"penalty": best, "val_identification": val[best], "test_identification": test}
