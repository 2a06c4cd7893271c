"""What the scaling study writes for people: the markdown report and the figures (curves with seed bands and fits)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def markdown(report: dict) -> str:
    a = report["analysis"]
    world = report.get("world")
    setting = "" if not world else (f" (world: single-trial SNR {world['snr']:g}, {world['test_repeats']} test "
                                    f"repetitions, {world['response']} responses, shared noise {world['shared_noise']:g})")
    lines = ["# Scaling study", "", f"{report['data']}{setting}; target {report['target']}; seeds {report['seeds']}.", "",
             "Test top-1 retrieval (brain -> image among the test images; mean ± std over seeds):", "",
             "| arm | training pairs | top-1 | chance | top-5 | median rank | embedding r |", "|---|---|---|---|---|---|---|"]
    for arm, e in a["arms"].items():
        for row in e["curve"]:
            lines.append(f"| {arm} | {row['n_train']:.0f} | {row['top1']['mean']:.3f} ± {row['top1']['std']:.3f} | "
                         f"{row['top1']['chance']:.3f} | {row['top5']['mean']:.3f} | "
                         f"{row['median_rank']['mean']:.3f} | {row['correlation']['mean']:.3f} |")
    lines += ["", "Fit top-1 = a + b log10(pairs) (all seeds' points; b's 95 % interval by resampling seeds):", "",
              "| arm | slope b | 95 % interval | intercept a | R^2 |", "|---|---|---|---|---|"]
    for arm, e in a["arms"].items():
        f = e["fits"]["top1"]
        if f["slope"] is None:
            lines.append(f"| {arm} | - | - | - | - |")
            continue
        ci = "-" if f["slope_ci"] is None else f"[{f['slope_ci'][0]:.3f}, {f['slope_ci'][1]:.3f}]"
        r2 = "-" if f["r2"] is None else f"{f['r2']:.2f}"
        lines.append(f"| {arm} | {f['slope']:.3f} | {ci} | {f['intercept']:.3f} | {r2} |")
    if a["gaps"]:
        lines += ["", "Gaps in top-1 (paired by seed; mean ± std):", "", "| comparison | training pairs | gap |",
                  "|---|---|---|"]
        for name, rows in a["gaps"].items():
            lines += [f"| {name} | {r['n_train']:.0f} | {r['top1_gap']:+.3f} ± {r['std']:.3f} |" for r in rows]
    avg = {arm: e["averaging"] for arm, e in a["arms"].items() if e["averaging"]}
    if avg:
        reps = [p["repetitions"] for p in next(iter(avg.values()))]
        lines += ["", "Test-time averaging at the largest size (top-1 over 1..R repetitions):", "",
                  "| arm | " + " | ".join(f"R={r}" for r in reps) + " |", "|---" * (len(reps) + 1) + "|"]
        lines += [f"| {arm} | " + " | ".join(f"{p['top1']:.3f}" for p in pts) + " |" for arm, pts in avg.items()]
    for mode, e in a.get("subjects", {}).items():
        fit = e["fit"]
        slope = ("" if fit["slope"] is None else f"; top-1 = {fit['intercept']:.3f} {'+' if fit['slope'] >= 0 else '-'} "
                 f"{abs(fit['slope']):.3f} log10(S)")
        lines += ["", f"Subjects axis, mlp-shared, {mode} pairs fixed (tested on the first subject){slope}:", "",
                  "| subjects S | pairs per subject | top-1 | chance |", "|---|---|---|---|"]
        lines += [f"| {r['subjects']} | {r['pairs_per_subject']:.0f} | {r['top1']['mean']:.3f} ± {r['top1']['std']:.3f} | "
                  f"{r['top1']['chance']:.3f} |" for r in e["curve"]]
    return "\n".join(lines) + "\n"


def _band_plot(path: Path, curves: dict, chance: float, xlabel: str, ylabel: str, title: str, log_x: bool = False,
               fits: dict | None = None) -> None:
    """One line per curve (label -> (x, mean, std)) with its +-std band, dashed fits (label -> (a, b): a + b log10 x)
    and chance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (x, m, s) in curves.items():
        x, m, s = np.asarray(x, float), np.asarray(m), np.asarray(s)
        line, = ax.plot(x, m, "o-", label=label)
        ax.fill_between(x, m - s, m + s, color=line.get_color(), alpha=0.2)
        if fits and fits.get(label):
            xs = np.geomspace(x.min(), x.max(), 20)
            ax.plot(xs, fits[label][0] + fits[label][1] * np.log10(xs), "--", color=line.get_color(), lw=1)
    ax.axhline(chance, color="gray", lw=1, ls=":", label="chance")
    ax.set(xscale="log" if log_x else "linear", xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot(report: dict, out: Path) -> None:
    """scaling.png (top-1 vs training pairs with fits), averaging.png, and subjects.png when the axis ran."""
    a = report["analysis"]
    top1 = lambda rows: ([r["top1"]["mean"] for r in rows], [r["top1"]["std"] for r in rows])
    chance = next(iter(a["arms"].values()))["curve"][0]["top1"]["chance"]
    _band_plot(out / "scaling.png", {arm: ([r["n_train"] for r in e["curve"]], *top1(e["curve"]))
                                     for arm, e in a["arms"].items()}, chance, "training pairs",
               "test top-1 (brain -> image)", "scaling with data", log_x=True,
               fits={arm: (e["fits"]["top1"]["intercept"], e["fits"]["top1"]["slope"])
                     if e["fits"]["top1"]["slope"] is not None else None for arm, e in a["arms"].items()})
    avg = {arm: e["averaging"] for arm, e in a["arms"].items() if e["averaging"]}
    if avg:
        _band_plot(out / "averaging.png", {arm: ([p["repetitions"] for p in pts], [p["top1"] for p in pts],
                                                 [p["std"] for p in pts]) for arm, pts in avg.items()},
                   chance, "test repetitions averaged", "test top-1", "test-time averaging (largest size)")
    if a.get("subjects"):
        _band_plot(out / "subjects.png", {f"mlp-shared, {mode} pairs fixed": ([r["subjects"] for r in e["curve"]],
                                                                              *top1(e["curve"]))
                                          for mode, e in a["subjects"].items()},
                   chance, "training subjects", "test top-1 (first subject)", "scaling with subjects")
