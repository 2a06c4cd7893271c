"""Time of `mindvis-eval --suite nsd` at NSD size: the shared-1000 test images at 425 px, one reconstruction each.

Networks are built with random weights (the time does not depend on them; no weights can be downloaded here):
torchvision AlexNet, Inception-v3, EfficientNet-B1 and ResNet-50 (SwAV's architecture), and a CLIP ViT-L/14 vision
tower from transformers. Each metric is timed alone (features of the 1,000 ground truths and the 1,000
reconstructions, then the score). CLIP ViT-L/14 is timed on ``--clip-images`` pairs and scaled to 1,000 (its cost is
linear in the number of images); the row says so.

    python bench/bench_nsd_suite.py [--n 1000] [--out bench/results/nsd_suite_cpu.md]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from timing import device_label


def networks():
    import torchvision.models as tvm
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from mindvis.evaluation.nsd_suite import clip_features, torchvision_features

    torch.manual_seed(0)
    alex = tvm.alexnet()
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=1024, intermediate_size=4096,
                                                          num_hidden_layers=24, num_attention_heads=16,
                                                          image_size=224, patch_size=14, projection_dim=768))
    return {"alexnet2": torchvision_features("alexnet2", alex), "alexnet5": torchvision_features("alexnet5", alex),
            "inception": torchvision_features("inception", tvm.inception_v3(init_weights=False, aux_logits=True,
                                                                            transform_input=True)),
            "effnet": torchvision_features("effnet", tvm.efficientnet_b1()),
            "swav": torchvision_features("swav", tvm.resnet50()), "clip": clip_features(clip)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--clip-images", type=int, default=100)
    p.add_argument("--out", default="bench/results/nsd_suite_cpu.md")
    args = p.parse_args()
    from mindvis.evaluation.nsd_suite import TABLE, nsd_suite

    g = torch.Generator().manual_seed(0)
    gt = torch.nn.functional.interpolate(torch.rand(args.n, 3, 16, 16, generator=g), size=425, mode="bilinear")
    rec = gt.clone()
    for i in range(0, args.n, 50):  # noisy reconstructions, made in place (NSD size is 2.2 GB per image set)
        rec[i:i + 50].add_(torch.randn(len(rec[i:i + 50]), 3, 425, 425, generator=g), alpha=0.2).clamp_(0, 1)
    nets = networks()
    lines = [f"# NSD metric suite, {args.n} images at 425 px, one reconstruction each ({device_label('cpu')})", "",
             "| metric | seconds | value (random networks) |", "|---|---|---|"]
    total = 0.0
    for key, header, _ in TABLE:
        n = args.clip_images if key == "clip" else args.n
        t0 = time.perf_counter()
        report = nsd_suite(rec[:n, None], gt[:n], nets, metrics=(key,))
        seconds = (time.perf_counter() - t0) * args.n / n
        total += seconds
        note = f" (timed on {n}, scaled)" if n != args.n else ""
        lines.append(f"| {header} | {seconds:.1f}{note} | {report['metrics'][key]['mean']:.3f} |")
        print(lines[-1], flush=True)
    lines += [f"| all | {total:.0f} | |", "",
              "Values are of random networks and noisy reconstructions: they only show that every metric ran. "
              "PixCorr and SSIM do not use networks."]
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
