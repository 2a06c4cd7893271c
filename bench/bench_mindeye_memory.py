"""MindEye1 and MindEye2 at full size: parameters, what runs on CPU within 24 GiB, and the memory a GPU needs to train
each recipe at the reference batch sizes.

Configurations (the released models'; mindvis.models defaults):

* MindEye1: MindEye1Network (15,724 voxels of subject 1, h 4096, 4 blocks, 257 x 768 tokens, projector 2048) and
  its prior (768 wide, 6 layers, 12 heads of 64); batch 32.
* MindEye2, multi-subject pretraining: 7 adapters (subjects 2-8: 14,278 / 15,226 / 13,153 / 13,039 / 17,907 /
  12,682 / 14,386 voxels), h 4096, 4 blocks, 256 x 1664 tokens, the blurry branch, the bigG prior (1664 wide,
  6 layers, 32 heads of 52); batch 42 (6 per subject).
* MindEye2, a new subject fine-tuned (subject 1, 15,724 voxels): one adapter; batch 24.

Measured here (each in its own process; peak resident memory from the kernel): the forward pass at batch 1 in
fp32; a training step (forward, backward, an SGD step, so no optimiser state) at batch 2 in fp32 for MindEye1 and in
bf16 weights under bf16 autocast for MindEye2 (its fp32 weights and gradients alone are 17.9 GB; multi-subject: 2 samples per subject);
and the activation memory autograd keeps for the backward pass (the bytes of the distinct tensors saved by the
forward, fp32 and bf16) at batch 1 and 2, from which the per-sample cost is extrapolated linearly to the reference
batch (MindEye2's measured with one adapter: a sample's activations do not depend on how many adapters exist). The GPU table then adds, per
trainable parameter, 4 bytes of weights + 4 of gradients + 8 of AdamW moments (fp32 training, and mixed precision
as the references train: fp32 master weights, half-precision activations and a half-precision copy of the weights),
or 2 + 2 + 4 (pure bf16, a lower bound).
Targets are cached by mindvis (the references run CLIP ViT-L/14, OpenCLIP bigG, the SD VAE and ConvNeXt-XL during
training; they are not counted here).

    python bench/bench_mindeye_memory.py [--out bench/results/mindeye_memory.md]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ME2_MULTI_VOXELS = [14278, 15226, 13153, 13039, 17907, 12682, 14386]
RECIPES = {"mindeye1": {"batch": 32, "voxels": [15724]},
           "mindeye2-multi": {"batch": 42, "voxels": ME2_MULTI_VOXELS},
           "mindeye2-new-subject": {"batch": 24, "voxels": [15724]}}
GiB = 2 ** 30


def build(recipe: str, dtype=None):
    import torch

    from mindvis.models.mindeye1 import MindEye1Network
    from mindvis.models.mindeye2 import MindEye2Config, MindEye2Network
    from mindvis.models.mindeye_prior import MindEyePrior, MindEyePriorConfig, mindeye2_prior_config

    torch.manual_seed(0)
    if recipe == "mindeye1":
        net, prior = MindEye1Network(), MindEyePrior(MindEyePriorConfig())
    else:
        net = MindEye2Network(MindEye2Config(num_voxels=RECIPES[recipe]["voxels"]))
        prior = MindEyePrior(mindeye2_prior_config())
    if dtype is not None:
        net, prior = net.to(dtype), prior.to(dtype)
    return net, prior


def step_loss(recipe: str, net, prior, batch: int, dtype):
    """The recipe's loss terms on random data (MindEye2's blurry L1 on random latents); bf16 weights run under
    bf16 autocast (the prior mixes float32 schedule terms in)."""
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        return _step_loss(recipe, net, prior, batch, dtype)


def _step_loss(recipe: str, net, prior, batch: int, dtype):
    import torch

    from mindvis.contrastive import soft_clip_loss

    n_sub = len(RECIPES[recipe]["voxels"])
    if recipe == "mindeye1":
        out = net(torch.randn(batch, 15724, dtype=dtype))
    else:
        share = max(1, batch // n_sub)
        xs = [torch.randn(share, v, dtype=dtype) for v in RECIPES[recipe]["voxels"]]
        h = torch.cat([net.forward_adapter(x, s) for s, x in enumerate(xs)])
        trunk = net.forward_trunk(h)
        tokens = net.forward_backbone(trunk)
        out = {"regression": tokens, "contrastive": net.forward_clip_proj(tokens)}
        out["blurry"], out["blurry_maps"] = net.forward_blurry(trunk)
    y = torch.randn_like(out["regression"])
    loss = soft_clip_loss(out["contrastive"], y, 0.006) + 30 * prior.loss(y, out["regression"])[0]
    if "blurry" in out:
        loss = loss + 0.5 * out["blurry"].abs().mean()
    return loss


def saved_bytes(recipe: str, net, prior, batch: int, dtype) -> int:
    """Bytes of the distinct non-parameter tensors autograd saves for the backward pass."""
    import torch

    params = {p.untyped_storage().data_ptr() for m in (net, prior) for p in m.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step_loss(recipe, net, prior, batch, dtype)
    return sum(seen.values())


def one(task: str) -> dict:
    """A measurement, run in a child process (see main)."""
    import torch

    recipe, what = task.split(":")
    t0 = time.time()
    if what == "forward":
        net, prior = build(recipe)
        with torch.no_grad():
            x = torch.randn(1, RECIPES[recipe]["voxels"][0])
            tokens = net(x)["regression"]
            prior.forward_denoiser(tokens, torch.tensor([50]), tokens)
        return {"seconds": time.time() - t0, "network": sum(p.numel() for p in net.parameters()),
                "prior": sum(p.numel() for p in prior.parameters())}
    if what.startswith("activations"):
        dtype = torch.bfloat16 if what.endswith("bf16") else torch.float32
        net, prior = build(recipe, dtype)
        return {str(b): saved_bytes(recipe, net, prior, b, dtype) for b in (1, 2)}
    dtype = torch.float32 if recipe == "mindeye1" else torch.bfloat16  # what fits in 24 GiB
    net, prior = build(recipe, dtype)
    opt = torch.optim.SGD(list(net.parameters()) + list(prior.parameters()), lr=1e-6)
    t1 = time.time()
    batch = 2 * len(RECIPES[recipe]["voxels"])  # multi-subject: 2 per subject
    loss = step_loss(recipe, net, prior, batch, dtype)
    loss.backward()
    opt.step()
    return {"seconds": time.time() - t1, "dtype": str(dtype).split(".")[-1], "batch": batch, "loss": loss.item()}


def run_child(task: str) -> dict:
    proc = subprocess.Popen([sys.executable, __file__, "--one", task], stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        return {"failed": status}
    return {**json.loads(out.strip().splitlines()[-1]), "peak_rss_GiB": usage.ru_maxrss / 2 ** 20}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/results/mindeye_memory.md")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one)))
        return
    import torch

    from timing import device_label

    m, loads = {}, []
    for recipe in RECIPES:
        # activations per sample do not depend on the number of adapters: MindEye2's are measured on one subject
        whats = ("forward", "step") if recipe == "mindeye2-multi" else ("forward", "activations-fp32",
                                                                         "activations-bf16", "step")
        for what in whats:
            loads.append(os.getloadavg()[0])
            m[(recipe, what)] = run_child(f"{recipe}:{what}")
            loads.append(os.getloadavg()[0])
            print(recipe, what, m[(recipe, what)], f"(load {os.getloadavg()[0]:.1f})", flush=True)
    threads = os.environ.get("OMP_NUM_THREADS")
    lines = [f"**MindEye1 and MindEye2 at full size** ({device_label('cpu')}"
             + (f", OMP_NUM_THREADS={threads}" if threads else "") + f", torch {torch.__version__}, 24 GiB RAM "
             f"shared with other jobs, load average {min(loads):.1f}-{max(loads):.1f} during the runs; each "
             "measurement once, in its own process)", "",
             "*Parameters and what runs on this CPU (24 GiB)*", "",
             "| recipe | network | prior | trainable total | forward, batch 1, fp32 | training step |",
             "|---|---|---|---|---|---|"]
    for recipe in RECIPES:
        f, s = m[(recipe, "forward")], m[(recipe, "step")]
        if "network" not in f:
            lines.append(f"| {recipe} | the forward pass failed ({f}) | | | | |")
            continue
        total = f["network"] + f["prior"]
        step = (f"{s['seconds']:.0f} s, {s['peak_rss_GiB']:.1f} GiB peak ({s['dtype']} weights, batch {s['batch']}, "
                f"SGD)" if "seconds" in s else f"did not fit ({s})")
        lines.append(f"| {recipe} | {f['network']:,} | {f['prior']:,} | {total:,} | {f['seconds']:.0f} s, "
                     f"{f['peak_rss_GiB']:.1f} GiB peak | {step} |")
    lines += ["", "*Training memory a GPU needs at the reference batch sizes (computed from the counts and the "
              "measured activations above; not measured on a GPU)*", "",
              "Weights + gradients + AdamW moments per trainable parameter, plus the activations autograd keeps "
              "(measured at batch 1 and 2, extrapolated linearly). Mixed precision = the references' fp16/bf16 "
              "autocast with fp32 weights (activations at half precision, plus autocast's half-precision copy of "
              "the weights during the step); pure bf16 = weights, gradients "
              "and moments in bf16 (a lower bound). Add 1-3 GiB for the CUDA context and allocator.", "",
              "| recipe | batch | weights + grads + AdamW, fp32 | activations fp32 | total fp32 | activations half | "
              "total mixed precision | total pure bf16 | GPU (mixed precision) |", "|---|---|---|---|---|---|---|---|---|"]
    gpu_rows = {}
    for recipe, r in RECIPES.items():
        f = m[(recipe, "forward")]
        measured = [m[("mindeye2-new-subject" if recipe == "mindeye2-multi" else recipe, f"activations-{k}")]
                    for k in ("fp32", "bf16")]
        if "network" not in f or any("1" not in a for a in measured):
            lines.append(f"| {recipe} | {r['batch']} | not computed: a measurement failed | | | | | | |")
            continue
        n = f["network"] + f["prior"]
        act = {}
        for kind in ("fp32", "bf16"):
            a = m[("mindeye2-new-subject" if recipe == "mindeye2-multi" else recipe, f"activations-{kind}")]
            per = a["2"] - a["1"]
            act[kind] = (a["1"] + per * (r["batch"] - 1)) / GiB
        state32, state16 = 16 * n / GiB, 8 * n / GiB
        mixed = state32 + 2 * n / GiB + act["bf16"]  # + autocast's half-precision copies of the weights
        gpu = next((g for g, cap in (("24 GB (RTX 4090)", 22), ("40 GB (A100 40GB)", 38), ("48 GB (A6000/L40S)", 46),
                                     ("80 GB (A100/H100 80GB)", 78), ("141 GB (H200)", 139)) if mixed + 2 <= cap),
                   "more than one GPU (sharded optimizer states, e.g. DeepSpeed ZeRO-2 as MindEye2's README uses)")
        gpu_rows[recipe] = {"batch": r["batch"], "trainable": n, "state_fp32_GiB": state32,
                            "activations_fp32_GiB": act["fp32"], "activations_half_GiB": act["bf16"],
                            "total_fp32_GiB": state32 + act["fp32"], "total_mixed_GiB": mixed,
                            "total_pure_bf16_GiB": state16 + act["bf16"], "gpu": gpu}
        lines.append(f"| {recipe} | {r['batch']} | {state32:.1f} GiB | {act['fp32']:.1f} GiB | "
                     f"{state32 + act['fp32']:.1f} GiB | {act['bf16']:.1f} GiB | {mixed:.1f} GiB | "
                     f"{state16 + act['bf16']:.1f} GiB | {gpu} |")
    lines += ["", "Measured activation bytes (saved for backward, distinct storages, parameters excluded):", ""]
    for recipe in ("mindeye1", "mindeye2-new-subject"):
        for kind in ("fp32", "bf16"):
            a = m[(recipe, f"activations-{kind}")]
            if "1" not in a:
                lines.append(f"- {recipe} {kind}: failed ({a})")
                continue
            lines.append(f"- {recipe} {kind}: batch 1 {int(a['1']) / GiB:.3f} GiB, batch 2 {int(a['2']) / GiB:.3f} GiB")
    Path(args.out).write_text("\n".join(lines) + "\n")
    Path(args.out).with_suffix(".json").write_text(json.dumps(
        {"device": device_label("cpu"), "omp_num_threads": threads, "torch": torch.__version__, "load_average": loads,
         "recipes": RECIPES, "measurements": {f"{r}:{w}": v for (r, w), v in m.items()}, "gpu_table": gpu_rows},
        indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
