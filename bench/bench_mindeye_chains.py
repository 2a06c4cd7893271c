"""MindEye1- and MindEye2-style chains on the synthetic NSD, through ``mindvis-sample`` and ``mindvis-eval --suite nsd
--protocol``: the table of the README (with chance) and the time of each stage.

Inputs are what the README's commands make: a prepared synthetic NSD subject, the world's embedding-conditioned
generator (``mindvis-train-prior --condition embedding``; the stand-in for Versatile Diffusion / unCLIP), a
``--recipe mindeye1-synthetic`` run and its low-level model (``mindvis-train-lowlevel``), a ``--recipe
mindeye2-synthetic`` run (its blurry branch regresses pixels). Chance rows: PixCorr and SSIM of every scored image
against the ground truth of another test image (each cyclic shift of the ground truths, averaged); retrieval 1 / n.

    python bench/bench_mindeye_chains.py --nsd runs/nsd/subj01 --generator priors/embedding \\
        --me1 runs/align/me1 --me1-lowlevel runs/lowlevel/me1 --me2 runs/align/me2 --out runs/chains
"""
from __future__ import annotations

import argparse
import json
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


def row(report: dict) -> dict:
    m = report["metrics"]
    return {k: m[k]["mean"] for k in ("pixcorr", "ssim", "image_retrieval", "brain_retrieval") if k in m}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nsd", required=True)
    p.add_argument("--generator", required=True)
    p.add_argument("--me1", required=True)
    p.add_argument("--me1-lowlevel", required=True)
    p.add_argument("--me2", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--num-samples", type=int, default=16)
    args = p.parse_args()
    from mindvis.evaluation.cli import main as eval_main
    from mindvis.pipelines.sample_cli import main as sample_main

    out = Path(args.out)
    results = {}
    for family, model, extra in (("mindeye1", args.me1, ["--lowlevel", args.me1_lowlevel, "--num-samples",
                                                         str(args.num_samples)]),
                                 ("mindeye2", args.me2, [])):
        folder = out / family
        t0 = time.time()
        assert sample_main(["--model", model, "--generator", args.generator, "--out", str(folder), *extra]) == 0
        t1 = time.time()
        assert eval_main(["--samples", str(folder), "--suite", "nsd", "--protocol", family]) == 0
        t2 = time.time()
        report = json.loads((folder / "nsd_eval.json").read_text())
        res = {"protocol": row(report), "sample_seconds": round(t1 - t0, 1), "eval_seconds": round(t2 - t1, 1),
               "deviations": report["protocol"]["deviations"], "n": report["settings"]["n_images"],
               "skipped": report["skipped"]}
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
    (out / "chains.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
