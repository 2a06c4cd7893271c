"""The analysis of the scaling study's cells: per arm, the curve over training sizes, log-linear fits with bootstrap
intervals, the gaps between arms and the averaging curve; for the subjects axis, the curve over training subjects."""
from __future__ import annotations

import numpy as np

METRICS = ("top1", "top5", "median_rank", "correlation")


def analyse_subjects(results: list[dict], modes: list[str], bootstrap: int, seed: int = 0) -> dict:
    """Per mode: top-1 mean/std over seeds per number of subjects (one-subject cells count in every mode) and the
    fit of top-1 on log10(subjects)."""
    rng = np.random.default_rng(seed)
    out = {}
    for mode in modes:
        rs = [r for r in results if r["mode"] in (mode, "any")]
        if not rs:
            continue
        curve = []
        for k in sorted({r["subjects"] for r in rs}):
            v = np.array([r["test"]["top1"] for r in rs if r["subjects"] == k])
            curve.append({"subjects": k, "top1": {"mean": float(v.mean()), "std": float(v.std()),
                                                  "chance": rs[0]["chance"]["top1"]}, "seeds": len(v),
                          "pairs_per_subject": float(np.mean([np.mean(list(r["pairs_per_subject"].values()))
                                                              for r in rs if r["subjects"] == k]))})
        fit = fit_log_linear(np.array([r["subjects"] for r in rs], float), np.array([r["test"]["top1"] for r in rs]),
                             np.array([r["seed"] for r in rs]), bootstrap, rng)
        out[mode] = {"curve": curve, "fit": fit}
    return out


def fit_log_linear(n: np.ndarray, y: np.ndarray, seeds: np.ndarray, bootstrap: int, rng) -> dict:
    """y = intercept + slope * log10(n) by least squares over every (size, seed) point, R^2, and the 95 % interval
    of the slope from resampling the seeds with replacement."""
    x = np.log10(n)
    if len(np.unique(x)) < 2:
        return {"slope": None, "intercept": None, "r2": None, "slope_ci": None}
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (intercept + slope * x)
    ss_tot = ((y - y.mean()) ** 2).sum()
    r2 = 1 - (resid ** 2).sum() / ss_tot if ss_tot > 0 else None
    uniq = np.unique(seeds)
    draws = []
    for _ in range(bootstrap if len(uniq) > 1 else 0):
        pick = np.concatenate([np.flatnonzero(seeds == s) for s in rng.choice(uniq, len(uniq))])
        if len(np.unique(x[pick])) > 1:
            draws.append(np.polyfit(x[pick], y[pick], 1)[0])
    ci = [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))] if draws else None
    return {"slope": float(slope), "intercept": float(intercept), "r2": None if r2 is None else float(r2),
            "slope_ci": ci}


def analyse(results: list[dict], bootstrap: int = 1000, seed: int = 0) -> dict:
    """Per arm: curves (mean, std over seeds per size), fits, averaging; and the gaps between arms."""
    rng = np.random.default_rng(seed)
    out = {"arms": {}, "gaps": {}}
    by_arm: dict[str, list[dict]] = {}
    for r in results:
        by_arm.setdefault(r["arm"], []).append(r)
    for arm, rs in by_arm.items():
        n = np.array([r["n_train"] for r in rs], dtype=float)
        seeds = np.array([r["seed"] for r in rs])
        entry = {"curve": [], "fits": {}, "averaging": []}
        for label in sorted({r["size"] for r in rs}, key=lambda lb: np.mean([r["n_train"] for r in rs
                                                                             if r["size"] == lb])):
            cell = [r for r in rs if r["size"] == label]
            row = {"size": label, "n_train": float(np.mean([r["n_train"] for r in cell])), "seeds": len(cell)}
            for m in METRICS:
                v = np.array([r["test"][m] for r in cell])
                row[m] = {"mean": float(v.mean()), "std": float(v.std()), "chance": cell[0]["chance"][m]}
            entry["curve"].append(row)
        for m in ("top1", "top5", "correlation"):
            entry["fits"][m] = fit_log_linear(n, np.array([r["test"][m] for r in rs]), seeds, bootstrap, rng)
        largest = max(rs, key=lambda r: r["n_train"])["size"]
        curves = [r["averaging"] for r in rs if r["size"] == largest and r["averaging"]]
        for i in range(min((len(c) for c in curves), default=0)):
            v = np.array([c[i]["top1"] for c in curves])
            entry["averaging"].append({"repetitions": curves[0][i]["repetitions"], "top1": float(v.mean()),
                                       "std": float(v.std())})
        out["arms"][arm] = entry

    def gap(a: str, b: str) -> list[dict]:
        rows = []
        for label in [row["size"] for row in out["arms"][a]["curve"]]:
            pairs = [(x["test"]["top1"], y["test"]["top1"]) for x in by_arm[a] for y in by_arm[b]
                     if x["size"] == y["size"] == label and x["seed"] == y["seed"]]
            if pairs:
                d = np.array([p - q for p, q in pairs])
                rows.append({"size": label, "n_train": next(r["n_train"] for r in out["arms"][a]["curve"]
                                                             if r["size"] == label),
                             "top1_gap": float(d.mean()), "std": float(d.std()), "seeds": len(d)})
        return rows

    pairs = [(a, "ridge") for a in by_arm if a != "ridge"] + [("mbm-rest", "mbm-random"), ("mbm-target", "mbm-random"),
                                                               ("mbm-rest", "mbm-target")]
    for a, b in pairs:
        if a in by_arm and b in by_arm:
            out["gaps"][f"{a} - {b}"] = gap(a, b)
    return out
