"""Run MindEye's own loss functions, temperature schedule and OneCycle scheduler on seeded inputs; write an .npz.

    # MindEye1 (MedARC-AI/fMRI-reconstruction-NSD), in its venv (torch 2.0.1, see README.md here):
    /work/refenv/mindeye1-recipe/bin/python tools/reference_fixtures/mindeye_losses.py mindeye1 \
        --reference /work/.mirror/MedARC-AI+fMRI-reconstruction-NSD/repo --out tests/fixtures/mindeye_losses
    # MindEye2 (MedARC-AI/MindEyeV2), in its venv (torch 2.1.0):
    /work/refenv/mindeye2-recipe/bin/python tools/reference_fixtures/mindeye_losses.py mindeye2 \
        --reference /work/.mirror/MedARC-AI+MindEyeV2/repo --out tests/fixtures/mindeye_losses

The reference's functions (``mixco``, ``mixco_nce``, ``soft_clip_loss``, ``cosine_anneal``, MindEye2's
``soft_cont_loss``) are read from its ``src/utils.py`` at run time and executed; the training scripts' own statements
(the SoftCLIP temperature list, the OneCycleLR construction, the parameter groups, MindEye2's per-subject mixing
and the concatenation of the subjects' permutations, MindEye2's batch arithmetic) are located in
``Train_MindEye.py`` / ``Train.ipynb`` by their syntax tree and executed as written, in a namespace holding small
stand-ins for the objects they read. Nothing of the reference is copied into mindvis.
"""
from __future__ import annotations

import argparse
import ast
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Reference, definitions, write_fixture  # noqa: E402


def _stmts(source: str, pred) -> list[ast.stmt]:
    """Every statement node (any depth) of ``source`` for which ``pred(node, segment)`` holds."""
    tree = ast.parse(source)
    return [n for n in ast.walk(tree) if isinstance(n, ast.stmt) and pred(n, ast.get_source_segment(source, n))]


def _one(source: str, pred, what: str) -> str:
    hits = _stmts(source, pred)
    if len(hits) != 1:
        raise SystemExit(f"expected one statement {what} in the reference, found {len(hits)}")
    return ast.get_source_segment(source, hits[0])


def _assign_to(name: str):
    return lambda n, seg: isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in n.targets)


def utils_namespace(utils_src: str, names: list[str]) -> types.SimpleNamespace:
    ns = {"torch": torch, "nn": nn, "F": F, "np": np}
    exec(compile(definitions(utils_src, names), "reference-utils", "exec"), ns)
    return types.SimpleNamespace(**{n: ns[n] for n in names})


def inputs(seed: int, b: int = 8, tokens: int = 5, dim: int = 6):
    g = torch.Generator().manual_seed(seed)
    preds = torch.randn(b, tokens, dim, generator=g)
    targets = torch.randn(b, tokens, dim, generator=g)
    # a targets copy close to preds, so that the losses are not all near log(B)
    near = preds + 0.3 * torch.randn(b, tokens, dim, generator=g)
    return preds, targets, near


def norm(x):  # as the training loops normalise before the losses
    return nn.functional.normalize(x.flatten(1), dim=-1)


def handmade_mix(b: int = 8):
    """A permutation with fixed points on a selected and on an unselected row, and its betas/select."""
    perm = torch.tensor([0, 2, 1, 3, 5, 4, 7, 6])[:b]  # 0 and 3 are their own partners
    select = torch.tensor([True, True, False, False, True, False, True, True])[:b]
    betas = torch.tensor([0.3, 0.8, 0.55, 0.2, 0.05, 0.9, 0.6, 0.4])[:b]
    betas = torch.where(select, betas, torch.ones_like(betas))  # the reference sets betas[~select] = 1
    return perm, betas, select


def onecycle_records(source: str, optimizer_params, namespace: dict, steps: int) -> dict:
    """Build the reference's OneCycleLR from its own statements and record lr and beta1 before each step."""
    total = _one(source, _assign_to("total_steps"), "total_steps = ...")
    sched = _one(source, lambda n, seg: isinstance(n, ast.Assign) and "OneCycleLR(" in seg, "OneCycleLR(...)")
    opt = torch.optim.AdamW(optimizer_params, lr=namespace["max_lr"])
    ns = dict(namespace, torch=torch, np=np, optimizer=opt)
    exec(total, ns)
    exec(sched, ns)
    lrs, beta1 = [], []
    for _ in range(ns["total_steps"]):
        lrs.append(opt.param_groups[0]["lr"])
        beta1.append(opt.param_groups[0]["betas"][0])
        opt.step()
        ns["lr_scheduler"].step()
    assert ns["total_steps"] == steps, (ns["total_steps"], steps)
    return {"lr": np.array(lrs), "beta1": np.array(beta1), "total_steps": ns["total_steps"],
            "source": sched.strip()}


def group_names(modules: dict[str, nn.Module], groups: list[dict]) -> list[list[str]]:
    names = {id(p): f"{part}.{n}" for part, m in modules.items() for n, p in m.named_parameters()}
    return [[names[id(p)] for p in g["params"]] for g in groups]


class PriorStandIn(nn.Module):
    """Parameter names of the shapes the rule is about ('LayerNorm.weight', '.bias', '.g', plain tensors)."""

    def __init__(self):
        super().__init__()
        self.LayerNorm = nn.LayerNorm(4)
        self.proj = nn.Linear(4, 4)
        self.learned_query = nn.Parameter(torch.zeros(3, 4))
        self.norm = nn.Module()
        self.norm.g = nn.Parameter(torch.ones(4))


def common_losses(u, out: dict, tag: str, seed: int):
    preds, targets, near = inputs(seed)
    out[f"{tag}/preds"], out[f"{tag}/targets"], out[f"{tag}/near"] = preds.numpy(), targets.numpy(), near.numpy()
    # mixco on voxels with the reference's own random draws (torch's global generator)
    vox = torch.randn(8, 11, generator=torch.Generator().manual_seed(seed + 1))
    out[f"{tag}/mixco/voxels"] = vox.numpy()
    torch.manual_seed(seed + 2)
    mixed, perm, betas, select = u.mixco(vox.clone())
    out[f"{tag}/mixco/mixed"], out[f"{tag}/mixco/perm"] = mixed.numpy(), perm.numpy()
    out[f"{tag}/mixco/betas"], out[f"{tag}/mixco/select"] = betas.numpy(), select.numpy()
    for case, (p, b, s) in {"random": (perm, betas, select), "handmade": handmade_mix()}.items():
        out[f"{tag}/mixco_nce/{case}/perm"], out[f"{tag}/mixco_nce/{case}/betas"] = p.numpy(), b.numpy()
        out[f"{tag}/mixco_nce/{case}/select"] = s.numpy()
        for tname, t in (("targets", targets), ("near", near)):
            out[f"{tag}/mixco_nce/{case}/{tname}/loss"] = np.array(
                u.mixco_nce(norm(preds), norm(t), temp=.006, perm=p, betas=b, select=s).item())
            out[f"{tag}/mixco_nce/{case}/{tname}/loss_one_way"] = np.array(
                u.mixco_nce(norm(preds), norm(t), temp=.006, perm=p, betas=b, select=s, bidirectional=False).item())
    out[f"{tag}/mixco_nce/plain/near/loss"] = np.array(
        u.mixco_nce(norm(preds), norm(near), temp=.006, perm=None, betas=None, select=None).item())
    temps = [0.004, 0.0075, 0.125]
    out[f"{tag}/soft_clip/temps"] = np.array(temps)
    out[f"{tag}/soft_clip/near/loss"] = np.array([u.soft_clip_loss(norm(preds), norm(near), temp=t).item()
                                                  for t in temps])
    out[f"{tag}/soft_clip/targets/loss"] = np.array([u.soft_clip_loss(norm(preds), norm(targets), temp=t).item()
                                                     for t in temps])


def schedule_records(source: str, u, out: dict, tag: str):
    stmt = _one(source, _assign_to("soft_loss_temps"), "soft_loss_temps = ...")
    for epochs in (10, 150, 240, 300):
        ns = {"utils": u, "num_epochs": epochs, "mixup_pct": .33}
        exec(stmt, ns)
        out[f"{tag}/softclip_temps/{epochs}"] = ns["soft_loss_temps"].numpy()
        out[f"{tag}/bimixco_epochs/{epochs}"] = np.array(int(.33 * epochs))
    return stmt.strip()


def mindeye1(ref: Reference, out_dir: Path) -> None:
    train = ref.read("src/Train_MindEye.py")
    u = utils_namespace(ref.read("src/utils.py"), ["mixco", "mixco_nce", "soft_clip_loss", "cosine_anneal"])
    out: dict[str, np.ndarray] = {}
    common_losses(u, out, "me1", seed=1)
    meta = {"softclip_statement": schedule_records(train, u, out, "me1")}
    # OneCycleLR exactly as the script builds it (num_train // global_batch_size steps per epoch)
    params = [nn.Parameter(torch.zeros(2))]
    for name, (epochs, num_train, bs) in {"small": (10, 100, 32), "medium": (20, 230, 32)}.items():
        rec = onecycle_records(train, params, {"max_lr": 3e-4, "num_epochs": epochs, "num_train": num_train,
                                               "global_batch_size": bs}, epochs * (num_train // bs))
        out[f"me1/onecycle/{name}/lr"], out[f"me1/onecycle/{name}/beta1"] = rec["lr"], rec["beta1"]
        out[f"me1/onecycle/{name}/args"] = np.array([epochs, num_train // bs])
        meta["onecycle_statement"] = rec["source"]
    # parameter groups: the script's own statements on the reference BrainNetwork (small) and a prior stand-in
    models_src = ref.read("src/models.py")
    ns = {"torch": torch, "nn": nn, "np": np}
    exec("from functools import partial\n" + definitions(models_src, ["BrainNetwork"]), ns)
    v2c = ns["BrainNetwork"](out_dim=3 * 8, in_dim=10, clip_size=8, h=16, n_blocks=2)
    prior = types.SimpleNamespace(net=PriorStandIn(), voxel2clip=v2c)
    ns = {"diffusion_prior": prior}
    exec(_one(train, _assign_to("no_decay"), "no_decay = ..."), ns)
    exec(_one(train, _assign_to("opt_grouped_parameters"), "opt_grouped_parameters = ..."), ns)
    groups = ns["opt_grouped_parameters"]
    meta["param_groups"] = {"names": group_names({"net": prior.net, "voxel2clip": v2c}, groups),
                            "weight_decay": [g["weight_decay"] for g in groups]}
    write_fixture(out_dir, "mindeye1", out, meta, ref)


def mindeye2(ref: Reference, out_dir: Path) -> None:
    cells = ref.notebook_cells("src/Train.ipynb")
    train_loop = next(c for c in cells if "for train_i in range(num_iterations_per_epoch)" in c)
    u = utils_namespace(ref.read("src/utils.py"), ["mixco", "mixco_nce", "soft_clip_loss", "cosine_anneal",
                                                   "soft_cont_loss"])
    out: dict[str, np.ndarray] = {}
    common_losses(u, out, "me2", seed=2)
    meta = {"softclip_statement": schedule_records(train_loop, u, out, "me2")}

    # multi-subject BiMixCo: the notebook's per-subject mixing and its concatenation, executed as written
    per_subject = _one(train_loop, lambda n, seg: isinstance(n, ast.If) and "utils.mixco(voxel0)" in seg,
                       "if ...: utils.mixco(voxel0)")
    concat = _one(train_loop, lambda n, seg: isinstance(n, ast.If) and "torch.cat(perm_list" in seg,
                  "if ...: perm = torch.cat(perm_list ...)")
    sizes, dim = [4, 4, 4], 7
    subj_list = [2, 5, 7]
    g = torch.Generator().manual_seed(21)
    ns = {"utils": u, "epoch": 0, "mixup_pct": .33, "num_epochs": 150, "perm_iters": {}, "betas_iters": {},
          "select_iters": {}, "subj_list": subj_list, "torch": torch, "device": "cpu", "train_i": 0}
    torch.manual_seed(3)  # later subjects get own-partner rows, mixed and unmixed
    voxels_in, voxels_mixed = [], []
    for s, n in enumerate(sizes):
        v = torch.randn(n, 1, dim, generator=g)  # (B_s, 1, V): the notebook's voxel0 after unsqueeze(1)
        voxels_in.append(v.clone())
        ns.update(voxel0=v, s=s, iter=0)
        exec(per_subject, ns)
        voxels_mixed.append(ns["voxel0"])
    exec(concat, ns)
    tb = sum(sizes)
    preds = torch.randn(tb, 3, 5, generator=g)
    near = preds + 0.5 * torch.randn(tb, 3, 5, generator=g)
    for s, name in enumerate(subj_list):
        out[f"me2/multi/perm_subject{s}"] = ns["perm_iters"][f"subj0{name}_iter0"].numpy()
        out[f"me2/multi/voxels_subject{s}"] = voxels_in[s].numpy()
        out[f"me2/multi/mixed_subject{s}"] = voxels_mixed[s].numpy()
    out["me2/multi/perm"], out["me2/multi/betas"] = ns["perm"].numpy(), ns["betas"].numpy()
    out["me2/multi/select"], out["me2/multi/preds"], out["me2/multi/near"] = (
        ns["select"].numpy(), preds.numpy(), near.numpy())
    out["me2/multi/loss"] = np.array(u.mixco_nce(norm(preds), norm(near), temp=.006, perm=ns["perm"],
                                                 betas=ns["betas"], select=ns["select"]).item())
    meta["multi_subject_statements"] = [per_subject.strip(), concat.strip()]

    # the low-level branch's soft contrastive term, with the notebook's normalisation and temperature 0.2
    feats = torch.randn(3, 4, 6, generator=g)
    cnx = feats + 0.5 * torch.randn(3, 4, 6, generator=g)
    cnx_aug = cnx + 0.3 * torch.randn(3, 4, 6, generator=g)
    out["me2/blurry_cont/student"], out["me2/blurry_cont/teacher"] = feats.numpy(), cnx.numpy()
    out["me2/blurry_cont/teacher_aug"] = cnx_aug.numpy()
    out["me2/blurry_cont/loss"] = np.array(u.soft_cont_loss(
        nn.functional.normalize(feats.reshape(-1, feats.shape[-1]), dim=-1),
        nn.functional.normalize(cnx.reshape(-1, cnx.shape[-1]), dim=-1),
        nn.functional.normalize(cnx_aug.reshape(-1, cnx.shape[-1]), dim=-1), temp=0.2).item())

    # batch arithmetic of the data cell (per-subject share, iterations per epoch)
    data_cell = next(c for c in cells if "num_iterations_per_epoch = " in c and "dividing batch size" in c)
    batches = {}
    for name, (multi, bs, sessions) in {"multisubject_42": (True, 42, 40), "multisubject_21": (True, 21, 40),
                                        "finetune_40sess_24": (False, 24, 40), "finetune_1sess_24": (False, 24, 1)
                                        }.items():
        ns = {"np": np, "print": lambda *a, **k: None, "multi_subject": multi, "num_devices": 1,
              "num_sessions": sessions, "batch_size": bs, "subj_list": list(range(7)) if multi else [1]}
        exec(data_cell, ns)
        batches[name] = {"batch_size_per_subject": ns["batch_size"], "subjects": len(ns["subj_list"]),
                         "num_samples_per_epoch": ns["num_samples_per_epoch"],
                         "num_iterations_per_epoch": ns["num_iterations_per_epoch"]}
    meta["batches"] = batches

    # OneCycleLR exactly as the optimizer cell builds it
    opt_cell = next(c for c in cells if "OneCycleLR(" in c)
    params = [nn.Parameter(torch.zeros(2))]
    for name, (epochs, iters) in {"small": (10, 3), "medium": (20, 7)}.items():
        rec = onecycle_records(opt_cell, params, {"max_lr": 3e-4, "num_epochs": epochs,
                                                  "num_iterations_per_epoch": iters}, epochs * iters)
        out[f"me2/onecycle/{name}/lr"], out[f"me2/onecycle/{name}/beta1"] = rec["lr"], rec["beta1"]
        out[f"me2/onecycle/{name}/args"] = np.array([epochs, iters])
        meta["onecycle_statement"] = rec["source"]

    # parameter groups: the cell's statements on the notebook's RidgeRegression, the reference BrainNetwork (small,
    # without the blurry branch, which needs diffusers) and a prior stand-in
    ridge_cell = next(c for c in cells if "class RidgeRegression" in c)
    ns = {"torch": torch, "nn": nn}
    exec(definitions(ridge_cell, ["RidgeRegression"]), ns)
    models_src = ref.read("src/models.py")
    exec(definitions(models_src, ["BrainNetwork"]), ns)
    model = types.SimpleNamespace(ridge=ns["RidgeRegression"]([5, 6], out_features=8),
                                  backbone=ns["BrainNetwork"](h=8, in_dim=8, seq_len=1, n_blocks=2, clip_size=4,
                                                              out_dim=4 * 3, blurry_recon=False),
                                  diffusion_prior=PriorStandIn())
    ns = {"model": model, "use_prior": True}
    exec(_one(opt_cell, _assign_to("no_decay"), "no_decay = ..."), ns)
    exec(_one(opt_cell, _assign_to("opt_grouped_parameters"), "opt_grouped_parameters = ..."), ns)
    exec(_one(opt_cell, lambda n, seg: isinstance(n, ast.If) and "opt_grouped_parameters.extend" in seg,
              "if use_prior: ...extend"), ns)
    groups = ns["opt_grouped_parameters"]
    meta["param_groups"] = {"names": group_names({"ridge": model.ridge, "backbone": model.backbone,
                                                  "prior": model.diffusion_prior}, groups),
                            "weight_decay": [g["weight_decay"] for g in groups]}
    write_fixture(out_dir, "mindeye2", out, meta, ref)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", choices=["mindeye1", "mindeye2"])
    ap.add_argument("--reference", required=True, help="checkout folder or bare git dir of the reference")
    ap.add_argument("--out", default="tests/fixtures/mindeye_losses")
    args = ap.parse_args()
    torch.set_num_threads(1)
    {"mindeye1": mindeye1, "mindeye2": mindeye2}[args.which](Reference(args.reference), Path(args.out))


if __name__ == "__main__":
    main()
