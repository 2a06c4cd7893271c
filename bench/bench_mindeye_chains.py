"""MindEye1- and MindEye2-style chains on the synthetic NSD, through ``mindvis-sample`` and ``mindvis-eval --suite nsd
--protocol``: the table of the README (with chance) and the time of each stage.

Inputs are what the README's commands make: a prepared synthetic NSD subject, the world's embedding-conditioned
generator (``mindvis-train-prior --condition embedding``; the stand-in for Versatile Diffusion / unCLIP), a
``--recipe mindeye1-synthetic`` run and its low-level model (``mindvis-train-lowlevel``), a ``--recipe
mindeye2-synthetic`` run (its blurry branch regresses pixels). Chance rows: PixCorr and SSIM of every scored image
against the ground truth of another test image (each cyclic shift of the ground truths, averaged); retrieval 1 / n.

    python bench/bench_mindeye_chains.py --nsd runs/nsd/subj01 --generator priors/embedding \\
        --me1 runs/align/me1 --me1-lowlevel runs/lowlevel/me1 --me2 runs/align/me2 --out runs/chains

writes ``runs/chains/chains.json``; ``--results bench/results/mindeye_chains.md`` also writes the table (and its
.json) from this run and the ``chains.json`` of earlier runs named by ``--collect`` (other seeds: mean ± std).
``--collect`` with ``--results`` alone (no --nsd ...) only writes the table.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch


def scored_images(samples_npz: Path, protocol: str):
    """(the images the protocol scores (N, 1, 3, H, W), ground truth (N, 3, H, W), blurry or None) in [0, 1]."""
    from mindvis.evaluation.evaluate import to_float_images
    from mindvis.evaluation.nsd_protocols import prepare

    with np.load(samples_npz) as z:
        samples, truth = to_float_images(z["samples"]), to_float_images(z["ground_truth"])
        meta = json.loads(str(z["meta"]))
    chosen, blurry, _, _ = prepare(protocol, samples_npz, samples, meta)
    return chosen, truth, blurry


def chance(chosen, truth, blurry) -> dict:
    """PixCorr and SSIM of each scored image against the other images' ground truths (all cyclic shifts)."""
    from mindvis.evaluation.nsd_suite import nsd_suite

    n = len(truth)
    vals = {"pixcorr": [], "ssim": []}
    for s in range(1, n):
        r = nsd_suite(chosen, torch.roll(truth, s, 0), metrics=("pixcorr", "ssim"), blurry=blurry)
        for k in vals:
            vals[k].append(r["metrics"][k]["mean"])
    return {k: float(np.mean(v)) for k, v in vals.items()}


COLUMNS = [("pixcorr", "PixCorr"), ("ssim", "SSIM"), ("alexnet2", "Alex(2)"), ("alexnet5", "Alex(5)"),
           ("inception", "Incep"), ("clip", "CLIP"), ("effnet", "Eff"), ("swav", "SwAV"),
           ("image_retrieval", "image retrieval"), ("brain_retrieval", "brain retrieval")]


def row(report: dict) -> dict:
    m = report["metrics"]
    return {k: m[k]["mean"] for k, _ in COLUMNS if k in m}


def _cell(values: list, chance) -> str:
    if not values:
        return "-"
    v = np.array(values, dtype=float)
    text = f"{v.mean():.3f}" + (f" ± {v.std():.3f}" if len(v) > 1 else "")
    return text + (f" ({chance:.3f})" if chance is not None else "")


def write_table(runs: list[dict], md: Path, note: str = "") -> None:
    """The README's table from one chains.json per seed: mean ± std over seeds, chance in parentheses."""
    seeds = [r.get("seed") for r in runs]
    fam = {"mindeye1": "MindEye1-style", "mindeye2": "MindEye2-style"}
    variants = [("mindeye1", "protocol", "best of N by token similarity (`--protocol mindeye1`)"),
                ("mindeye1", "all_candidates", "every candidate scored (no best-of-N)"),
                ("mindeye2", "protocol", "0.75 reconstruction + 0.25 blurry (`--protocol mindeye2`)"),
                ("mindeye2", "unblended", "reconstructions alone (no blend)"),
                ("mindeye2", "blurry_alone", "blurry images alone")]
    shown = [(k, label) for k, label in COLUMNS if any(k in r[f][v] for r in runs for f, v, _ in variants
                                                       if v in r.get(f, {}))]
    loads = [x for r in runs for x in r.get("loads", [])]
    info = runs[0]
    lines = [f"**MindEye1- and MindEye2-style chains end to end on the synthetic NSD** ({info.get('device', 'cpu')}"
             + (f", OMP_NUM_THREADS={info['omp_num_threads']}" if info.get("omp_num_threads") else "") + ")", "",
             f"Seeds {seeds} (" + ("one seed: single values, no spread" if len(runs) == 1 else
                                   "mean ± std over the seeds, population std") + "); chance in parentheses: PixCorr and "
             "SSIM of the protocol's scored images against the other test images' ground truths (every cyclic shift, "
             "averaged; the same chance on a chain's other rows), "
             f"retrieval 1 / n; n = {info['mindeye1']['n']} test images."
             + (f" Load average {min(loads):.1f}-{max(loads):.1f} on 2 cores shared with other jobs." if loads else ""),
             "", "| chain | scored | " + " | ".join(label for _, label in shown) + " |",
             "|---|---|" + "---|" * len(shown)]
    table = []
    for f, v, label in variants:
        if not all(v in r.get(f, {}) for r in runs):
            continue
        cells, entry = [], {"chain": f, "scored": v}
        for k, _ in shown:
            vals = [r[f][v][k] for r in runs if k in r[f][v]]
            ch = runs[0][f]["chance"].get("retrieval" if k.endswith("retrieval") else k)
            cells.append(_cell(vals, ch))
            if vals:
                entry[k] = {"values": vals, "mean": float(np.mean(vals)), "std": float(np.std(vals)), "chance": ch}
        table.append(entry)
        lines.append(f"| {fam[f]} | {label} | " + " | ".join(cells) + " |")
    skipped = {k: why for r in runs for f in fam for k, why in r[f].get("skipped", {}).items()}
    if skipped:
        lines += ["", "Not scored here (their networks' weights are not on this machine and nothing is downloaded; "
                      "`mindvis-eval --nsd-weights` takes them): " + "; ".join(
                          f"{k} ({why.split(' (')[0]})" for k, why in sorted(skipped.items())) + "."]
    t = {f: {k: [r[f].get(k) for r in runs] for k in ("train_seconds", "sample_seconds", "eval_seconds")}
         for f in fam}
    join = lambda xs: ", ".join(str(x) for x in xs)  # noqa: E731
    lines += ["", "Seconds per seed (wall, on the shared machine): " + "; ".join(
        f"{fam[f]}: decoder training {join(t[f]['train_seconds'])}, sampling {join(t[f]['sample_seconds'])}, "
        f"scoring {join(t[f]['eval_seconds'])}" for f in fam) + "." + (f" {note}" if note else "")]
    dev = sorted({d for r in runs for f in fam for d in r[f].get("deviations", [])})
    if dev:
        lines += ["", "Deviations from the published procedures, as `mindvis-eval --protocol` lists them:", ""]
        lines += [f"- {d}" for d in dev]
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text("\n".join(lines) + "\n")
    md.with_suffix(".json").write_text(json.dumps({"seeds": seeds, "rows": table, "runs": runs}, indent=1) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nsd")
    p.add_argument("--generator")
    p.add_argument("--me1")
    p.add_argument("--me1-lowlevel")
    p.add_argument("--me2")
    p.add_argument("--out")
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--seed", type=int, help="recorded with the results; passed to mindvis-sample --seed if given")
    p.add_argument("--results", help="write the table here (markdown, and .json beside it)")
    p.add_argument("--collect", nargs="*", default=[], help="chains.json of other runs (seeds) for the table")
    p.add_argument("--note", default="", help="a sentence appended to the table's notes")
    args = p.parse_args()
    if not args.out:
        if not (args.results and args.collect):
            p.error("--out (with --nsd --generator --me1 --me1-lowlevel --me2), or --results with --collect")
        write_table([json.loads(Path(c).read_text()) for c in args.collect], Path(args.results), args.note)
        return
    missing = [n for n in ("nsd", "generator", "me1", "me1_lowlevel", "me2") if not getattr(args, n)]
    if missing:
        p.error("missing: " + ", ".join("--" + n.replace("_", "-") for n in missing))
    from mindvis.evaluation.cli import main as eval_main
    from mindvis.pipelines.sample_cli import main as sample_main

    from timing import device_label

    out = Path(args.out)
    results = {"seed": args.seed, "device": device_label("cpu"), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
               "loads": [os.getloadavg()[0]]}
    seed = ["--seed", str(args.seed)] if args.seed is not None else []
    for family, model, extra in (("mindeye1", args.me1, ["--lowlevel", args.me1_lowlevel, "--num-samples",
                                                         str(args.num_samples)]),
                                 ("mindeye2", args.me2, [])):
        folder = out / family
        t0 = time.time()
        assert sample_main(["--model", model, "--generator", args.generator, "--out", str(folder), *extra, *seed]) == 0
        t1 = time.time()
        assert eval_main(["--samples", str(folder), "--suite", "nsd", "--protocol", family]) == 0
        t2 = time.time()
        report = json.loads((folder / "nsd_eval.json").read_text())
        res = {"protocol": row(report), "sample_seconds": round(t1 - t0, 1), "eval_seconds": round(t2 - t1, 1),
               "deviations": report["protocol"]["deviations"], "n": report["settings"]["n_images"],
               "skipped": report["skipped"],
               "train_seconds": json.loads((Path(model) / "retrieval.json").read_text()).get("seconds")}
        if family == "mindeye1":
            low = Path(args.me1_lowlevel) / "lowlevel.json"
            res["lowlevel_seconds"] = json.loads(low.read_text()).get("seconds") if low.is_file() else None
        chosen, truth, blurry = scored_images(folder / "samples.npz", family)
        res["chance"] = chance(chosen, truth, blurry)
        res["chance"]["retrieval"] = 1 / report["metrics"]["image_retrieval"]["subset"] \
            if "image_retrieval" in report["metrics"] else None
        if family == "mindeye1":  # every candidate scored (no selection): what best-of-N adds
            assert eval_main(["--samples", str(folder), "--suite", "nsd", "--out", str(folder / "all")]) == 0
            res["all_candidates"] = row(json.loads((folder / "all" / "nsd_eval.json").read_text()))
        else:  # the blend's share: the unblended reconstructions and the blurry images alone
            from mindvis.evaluation.nsd_suite import nsd_suite

            res["unblended"] = row(nsd_suite(chosen, truth, metrics=("pixcorr", "ssim")))
            res["blurry_alone"] = row(nsd_suite(blurry[:, None], truth, metrics=("pixcorr", "ssim")))
        results[family] = res
        results["loads"].append(os.getloadavg()[0])
    (out / "chains.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    if args.results:
        write_table([json.loads(Path(c).read_text()) for c in args.collect] + [results], Path(args.results),
                    args.note)


if __name__ == "__main__":
    main()
