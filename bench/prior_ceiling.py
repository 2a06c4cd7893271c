"""The prior's ceiling (the test classes drawn from their true labels, scored like reconstructions: 50-way top-1 with
the synthetic world's classifier) over several sampling seeds, for a prior folder as it is and with its weights
rounded to float16 (the shipped storage question: is the ceiling unchanged?).

    python bench/prior_ceiling.py --prior mindvis/finetune/shipped/synthetic-FP --samples runs/demo/samples \
        --seeds 0 1 2 --out bench/results/prior_ceiling.md

``--samples``: a mindvis-sample folder of the synthetic test split (its ground truth, labels and world settings).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch


def ceiling(prior: Path, truth, labels, classifier, seed: int, num_samples: int, steps: int) -> float:
    from mindvis.evaluation import evaluate
    from mindvis.finetune.prior import sample_classes

    images = sample_classes(prior, labels.astype(np.int64), num_samples, steps, seed=seed)
    rep = evaluate(images, truth, classifier, metrics=("nway",), seed=seed)["metrics"]
    return float(rep["50way_top1_acc"]["mean"])


def rounded_copy(prior: Path, dtype: torch.dtype, out: Path) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(prior, out)
    for f in out.rglob("*.safetensors"):
        save_file({k: v.to(dtype).float().contiguous() for k, v in load_file(f).items()}, f)
    return out


def main() -> None:
    from mindvis.world import SyntheticWorldConfig
    from mindvis.evaluation.classifiers import load_classifier

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prior", required=True)
    p.add_argument("--samples", required=True, help="a mindvis-sample folder of the synthetic test split")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--num-samples", type=int, default=5)
    p.add_argument("--steps", type=int, default=25, help="DPM-Solver++ steps (as mindvis-demo)")
    p.add_argument("--out", default="bench/results/prior_ceiling.md")
    args = p.parse_args()
    with np.load(Path(args.samples) / "samples.npz", allow_pickle=False) as z:
        truth = torch.from_numpy(z["ground_truth"]).permute(0, 3, 1, 2).float() / 255
        labels, meta = z["labels"], json.loads(str(z["meta"]))
    classifier = load_classifier("synthetic", world_cfg=SyntheticWorldConfig(**meta["synthetic_world"]),
                                 image_size=truth.shape[-1])
    rows, res = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        variants = {"float32 (as trained)": Path(args.prior),
                    "float16-rounded weights": rounded_copy(Path(args.prior), torch.float16, Path(tmp) / "fp16")}
        for name, folder in variants.items():
            vals = [ceiling(folder, truth, labels, classifier, s, args.num_samples, args.steps) for s in args.seeds]
            res[name] = vals
            rows.append(f"| {name} | {' / '.join(f'{100 * v:.1f}' for v in vals)} | "
                        f"{100 * np.mean(vals):.1f} ± {100 * np.std(vals):.1f} % |")
            print(rows[-1], flush=True)
    Path(args.out).write_text("\n".join([
        f"# The prior's ceiling ({args.prior}; {len(labels)} test images x {args.num_samples} samples, DPM-Solver++ "
        f"{args.steps}, seeds {args.seeds})", "",
        "50-way top-1 of the test classes drawn from their true labels (the synthetic world's classifier).", "",
        "| weights | per seed | mean ± std over seeds |", "|---|---|---|", *rows, ""]))
    Path(args.out).with_suffix(".json").write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
