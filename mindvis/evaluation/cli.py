"""``mindvis-eval``: the paper's metrics on the arrays ``mindvis-sample`` writes."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from omegaconf import OmegaConf

from .classifiers import ClassifierUnavailable, load_classifier
from .evaluate import (DEFAULT_SETTINGS, PAIRWISE, PROTOCOLS, evaluate, markdown_report, protocol_deviations,
                       write_report)
from ..utils.cli import PlainHelpFormatter
from .inputs import sample_arrays


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mindvis-eval", description="Evaluate reconstructions: n-way top-k semantic "
                                "classification and pair-wise identification (MSE, PCC, SSIM, LPIPS), FID. Writes "
                                "eval.json and eval.md.", formatter_class=PlainHelpFormatter)
    p.add_argument("--samples", required=True, help="samples.npz from mindvis-sample (or its folder)")
    p.add_argument("--suite", choices=["paper", "nsd"], default="paper",
                   help="paper (default): n-way classification and pair-wise identification (eval.json/.md); nsd: "
                        "the NSD suite as MindEye/MindEye2 (PixCorr, SSIM, AlexNet(2/5), Inception, CLIP, EffNet-B, "
                        "SwAV, retrieval) in MindEye2's Table 1 columns (nsd_eval.json/.md), computed as their "
                        "published code computes them (plain bilinear resizes, EffNet-B1 IMAGENET1K_V2 weights)")
    p.add_argument("--nsd-weights", nargs="+", metavar="NET=FILE", default=[],
                   help="--suite nsd: local weights: alexnet=, inception=, effnet= (torchvision state dicts; default: "
                        "torch's cache; the published EffNet-B1 weights are IMAGENET1K_V2), swav= (the SwAV ResNet-50 "
                        "state dict), clip= (a CLIP ViT-L/14 folder; default: the cached hub id "
                        "openai/clip-vit-large-patch14)")
    p.add_argument("--antialias", action="store_true",
                   help="--suite nsd: antialiased resizes (current torchvision's default) instead of the published "
                        "plain bilinear ones; the report marks the row as not comparable to published rows")
    p.add_argument("--embeddings", metavar="FILE", help="--suite nsd: test_embeddings.npz of a mindvis-align run "
                                                        "(retrieval among 300 test items, 30 draws)")
    from .nsd_protocols import NSD_PROTOCOLS

    p.add_argument("--protocol", choices=sorted(PROTOCOLS) + list(NSD_PROTOCOLS),
                   help="a published evaluation: paper = MinD-Vis (ViT-H/14 at 518 px, 50-way top-1 with 50 distractor "
                        "draws per sample, mean over samples and best sample, pair-wise MSE/PCC/SSIM/LPIPS; samples "
                        "should be 5 per fMRI from PLMS 250 steps in fp32). Every departure (in the samples' "
                        "sampling or in flags given here) is listed in the report; without ViT-H weights the "
                        "classification is reported skipped and the rest runs. With --suite nsd: mindeye1 (best of "
                        "the 16 candidates by CLIP similarity) or mindeye2 (0.75 reconstruction + 0.25 blurry), on "
                        "samples of a MindEye model (mindvis.evaluation.nsd_protocols)")
    p.add_argument("--classifier", default=None,
                   help="vit_h_14 (the paper's), timm:NAME, or synthetic (trained on the synthetic world once). "
                        "Default: synthetic for samples of a synthetic run, else vit_h_14")
    p.add_argument("--classifier-weights", metavar="FILE", help="local weights for vit_h_14 / timm classifiers")
    p.add_argument("--n-way", type=int, help="classes per n-way trial (default and paper: 50)")
    p.add_argument("--top-k", type=int, help="top-k accuracy (default and paper: 1)")
    p.add_argument("--trials", type=int, help="random draws of distractor classes per sample (default and paper: 50)")
    p.add_argument("--metrics", nargs="+", choices=["nway", *PAIRWISE, "fid"],
                   help="which metrics (default: all; with --protocol paper: nway mse pcc ssim lpips)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random draws: n-way distractor classes (--suite paper) and the retrieval "
                        "subsets (--suite nsd) (default 0)")
    p.add_argument("--out", default=None, help="output folder (default: the samples' folder)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    path = Path(args.samples)
    path = path / "samples.npz" if path.is_dir() else path
    if not path.is_file():
        print(f"mindvis-eval: error: {path} not found", file=sys.stderr)
        return 2
    from ..config import ConfigError, build_config
    from ..data.fmri import DataError, read_npz
    from ..world import SyntheticWorldConfig

    try:
        arrays = read_npz(path, ["samples"], optional=["ground_truth", "meta"])
        if "ground_truth" not in arrays:
            raise DataError(f"{path} has no ground_truth (samples of an fMRI file cannot be scored)")
        samples, truth = sample_arrays(arrays, path)  # uint8 0..255 or floats in [0, 1], checked
        meta = json.loads(str(arrays["meta"])) if "meta" in arrays else {}
        world = meta.get("synthetic_world")
        # strict: an unknown or mistyped world setting in the metadata is named, never passed on
        world_cfg = (OmegaConf.to_object(build_config(SyntheticWorldConfig, defaults=world)) if world else None)
    except DataError as e:
        print(f"mindvis-eval: error: {e}", file=sys.stderr)
        return 2
    except ConfigError as e:
        print(f"mindvis-eval: error: {path}: its synthetic_world metadata does not fit this mindvis ({e})",
              file=sys.stderr)
        return 2
    if args.suite == "nsd":
        return _nsd_suite(args, path, samples, truth, meta)
    if args.protocol in NSD_PROTOCOLS:
        print(f"mindvis-eval: error: --protocol {args.protocol} is an NSD-suite protocol (add --suite nsd)",
              file=sys.stderr)
        return 2
    base = PROTOCOLS[args.protocol] if args.protocol else DEFAULT_SETTINGS
    chosen = {k: base[k] if getattr(args, k) is None else getattr(args, k) for k in DEFAULT_SETTINGS}
    name = args.classifier or ("synthetic" if world and not args.protocol else "vit_h_14")
    classifier, skipped = None, {}
    try:
        if "nway" in chosen["metrics"]:
            try:
                classifier = load_classifier(name, args.classifier_weights, world_cfg, image_size=truth.shape[-1])
            except ClassifierUnavailable as e:
                if args.classifier or args.classifier_weights or not args.protocol:
                    raise  # a classifier the user named must load
                skipped["nway"] = str(e)
        report = evaluate(samples, truth, classifier, chosen["n_way"], chosen["top_k"], chosen["trials"],
                          [m for m in chosen["metrics"] if m not in skipped], args.seed)
    except (ClassifierUnavailable, ValueError) as e:
        print(f"mindvis-eval: error: {e}", file=sys.stderr)
        return 2
    report["skipped"] |= skipped
    report["settings"] |= {"classifier": name, "samples_file": str(path), "sampling": meta}
    if args.protocol:
        deviations = protocol_deviations(args.protocol, meta, chosen | {"classifier": name})
        report["protocol"] = {"name": args.protocol, "deviations": deviations}
        for d in deviations:
            logging.warning("protocol %s: %s", args.protocol, d)
    out = Path(args.out) if args.out else path.parent
    write_report(report, out)
    print(markdown_report(report))
    print(f"report: {out / 'eval.json'}, {out / 'eval.md'} ({report['seconds']} s)")
    return 0


def _nsd_suite(args, path: Path, samples, truth, meta: dict) -> int:
    from tqdm.auto import tqdm

    from ..data.fmri import DataError, read_npz
    from ..utils.io import atomic_write_json, atomic_write_text
    from ..utils.offline import no_downloads
    from .inputs import (check_embeddings, check_nsd_weights, named_weights_failed, parse_nsd_weights,
                         refused_downloads)
    from .nsd_suite import load_networks, nsd_markdown, nsd_suite

    try:
        weights = parse_nsd_weights(args.nsd_weights)
        check_nsd_weights(weights)  # a file the user named loads, or the command fails here
        embeddings = None
        if args.embeddings:
            arrays = read_npz(args.embeddings, ["contrastive", "target"])
            embeddings = check_embeddings(arrays["contrastive"], arrays["target"], len(truth), args.embeddings)
        from .nsd_protocols import NSD_PROTOCOLS, load_extras, prepare, protocol_markdown

        blurry, protocol = None, None
        if args.protocol:  # mindeye1 | mindeye2 (mindvis.evaluation.nsd_protocols)
            if args.protocol not in NSD_PROTOCOLS:
                raise DataError(f"--protocol {args.protocol} is not an NSD-suite protocol (mindeye1, mindeye2)")
            samples, blurry, own, protocol = prepare(args.protocol, path, samples, meta)
            embeddings = embeddings if embeddings is not None else own
        elif embeddings is None:  # a MindEye model's samples carry their retrieval embeddings
            extras = load_extras(path)
            if "embeddings_pred" in extras and "embeddings_target" in extras:
                embeddings = {"pred": extras["embeddings_pred"], "target": extras["embeddings_target"]}
        with no_downloads("pass --nsd-weights NAME=FILE") as refused:  # the default networks: torch's cache only
            networks, skipped = load_networks(weights)
        named_weights_failed(weights, skipped)
        for line in refused_downloads(refused):  # skipped, and said where their weights go
            print(f"mindvis-eval: warning: {line}", file=sys.stderr)
        report = nsd_suite(samples, truth, networks, skipped, embeddings, progress=tqdm, antialias=args.antialias,
                           blurry=blurry)
    except (DataError, ValueError) as e:
        print(f"mindvis-eval: error: {e}", file=sys.stderr)
        return 2
    report["settings"] |= {"samples_file": str(path), "sampling": meta, "weights": weights,
                           "embeddings": args.embeddings}
    if protocol:
        report["protocol"] = protocol
    out = Path(args.out) if args.out else path.parent
    atomic_write_json(out / "nsd_eval.json", report)
    text = nsd_markdown(report, protocol["name"] if protocol else "mindvis")
    if protocol:
        text += protocol_markdown(protocol)
    atomic_write_text(out / "nsd_eval.md", text)
    print(text)
    print(f"report: {out / 'nsd_eval.json'}, {out / 'nsd_eval.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
