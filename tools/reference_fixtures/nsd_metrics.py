"""Reference values of the NSD metric suite, computed by MindEye's and MindEye2's own evaluation code.

Runs the published metric code itself, read at run time from the reference repositories (nothing of it is copied
here): the cells of MindEye2's ``src/final_evaluations.ipynb`` (resizing and the enhanced/blurry blend, two-way
identification, PixCorr, SSIM, AlexNet(2/5), Inception, EfficientNet-B1, SwAV, retrieval) and the cells of
MindEye1's ``src/Reconstruction_Metrics.py`` that run on a small test set, on seeded images with seeded random-init
networks (tests/seeded_weights.py). Loading is redirected, nothing else: torchvision's ``WeightsEnum.get_state_dict``
returns the seeded tensors of the family asked for (and records which weights enum the code asked for), and SwAV's
``torch.hub.load('facebookresearch/swav:main', 'resnet50')`` runs SwAV's own hubconf from the given checkout with its
``load_state_dict_from_url`` returning the seeded state dict (keys prefixed ``module.`` as in SwAV's file). For
retrieval, MindEye2's cell gets the committed target embeddings in place of images and an identity in place of the
OpenCLIP bigG embedder, and ``utils`` is a module of the three functions it calls (``seed_everything``,
``batchwise_cosine_similarity``, ``topk``), taken from MindEye2's ``src/utils.py`` by name.

Run in a separate environment with the torchvision the published tables used (0.16.0, as MindEye2's setup.sh pins;
tensor ``Resize`` did not antialias), never in mindvis' own:

    python tools/reference_fixtures/nsd_metrics.py --make-env /work/refenv/nsdsuite     # once
    /work/refenv/nsdsuite/bin/python tools/reference_fixtures/nsd_metrics.py \\
        --reference /path/to/MindEyeV2 --reference /path/to/fMRI-reconstruction-NSD --reference /path/to/swav \\
        --out tests/fixtures/nsd_suite_reference

Each ``--reference`` is a checkout or a bare git directory (its HEAD is extracted to a temporary folder). Writes
``ground_truth.png``, ``reconstructions.png``, ``blurry.png`` (the seeded images, side by side), ``inputs.npz`` (the
seeded embeddings) and ``reference.json`` (values, per-image values, provenance, versions).
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import importlib.util
import io
import json
import re
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
#: the environment of MindEye2's setup.sh for what the metrics touch (MindEye1's: torch 2.0.1, torchvision 0.15.2,
#: scikit-image 0.20.0, scipy 1.10.1; both tensor resizes are plain bilinear without antialiasing)
ENV = ["torch==2.1.0", "torchvision==0.16.0", "numpy<2", "scipy==1.11.4", "scikit-image==0.22.0", "tqdm==4.66.1"]
N_IMAGES, GT_SIZE, REC_SIZE, BLURRY_SIZE = 8, 72, 288, 64
N_EMBED, D_EMBED, EMBED_NOISE = 1000, 16, 1.3
IMAGE_SEED, EMBED_SEED = 7, 11


# ----------------------------------------------------------------------------------------------- seeded inputs
def _smooth(rng, n, size, cells):
    """(n, size, size, 3) smooth random fields in [0, 1]: coarse noise upsampled bilinearly (numpy only)."""
    coarse = rng.random((n, cells + 1, cells + 1, 3))
    x = np.linspace(0, cells, size)
    i0 = np.minimum(x.astype(int), cells - 1)
    f = x - i0
    rows = coarse[:, i0] * (1 - f)[None, :, None, None] + coarse[:, i0 + 1] * f[None, :, None, None]
    return rows[:, :, i0] * (1 - f)[None, None, :, None] + rows[:, :, i0 + 1] * f[None, None, :, None]


def make_inputs() -> dict[str, np.ndarray]:
    """Ground truths (72 px), reconstructions (288 px: their first resize to 256 downsamples), blurry
    reconstructions (64 px), and decoded / target embeddings for retrieval (1000 x 16)."""
    rng = np.random.default_rng(IMAGE_SEED)
    n = N_IMAGES
    gt = _smooth(rng, n, GT_SIZE, 6)
    yy, xx = np.mgrid[:GT_SIZE, :GT_SIZE]
    for i in range(n):  # a rectangle of its own colour each: edges
        y0, x0 = rng.integers(0, GT_SIZE // 2, 2)
        h, w = rng.integers(GT_SIZE // 6, GT_SIZE // 2, 2)
        gt[i][(yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)] = rng.random(3)
    # reconstructions: the ground truth mixed with another image (its weight falls to 0 over the set), upsampled 4x
    # (nearest), with bands of a one-pixel checkerboard whose aliasing depends on how the resize filters
    w = np.array([0.5, 0.3, 0.2, 0.1, 0.05, 0.0, 0.0, 0.0])[:, None, None, None]
    small = w * gt + (1 - w) * _smooth(rng, n, GT_SIZE, 9)
    rec = small.repeat(REC_SIZE // GT_SIZE, 1).repeat(REC_SIZE // GT_SIZE, 2)
    y, x = np.mgrid[:REC_SIZE, :REC_SIZE]
    checker = ((x + y + rng.integers(0, 2, (n, 1, 1))) % 2)[..., None].astype(float)
    band = ((y // 24) % 4 == 0)[None, ..., None]
    rec = np.where(band, 0.75 * rec + 0.25 * checker, rec)
    pick = np.arange(BLURRY_SIZE) * GT_SIZE // BLURRY_SIZE
    blurry = np.clip(0.6 * gt[:, pick][:, :, pick] + 0.4 * _smooth(rng, n, BLURRY_SIZE, 3), 0, 1)

    erng = np.random.default_rng(EMBED_SEED)
    target = erng.standard_normal((N_EMBED, D_EMBED)).astype(np.float32)
    pred = (target + EMBED_NOISE * erng.standard_normal((N_EMBED, D_EMBED))).astype(np.float32)

    def u8(a):  # (n, H, W, 3) uint8
        return np.round(a * 255).astype(np.uint8)

    return {"ground_truth": u8(gt), "reconstructions": u8(rec), "blurry": u8(blurry),
            "embed_target": target, "embed_pred": pred}


IMAGE_SETS = ("ground_truth", "reconstructions", "blurry")


def save_inputs(inputs: dict, out: Path) -> None:
    """Each image set as one PNG strip (images side by side), the embeddings as inputs.npz."""
    from PIL import Image

    for k in IMAGE_SETS:
        Image.fromarray(np.concatenate(list(inputs[k]), axis=1)).save(out / f"{k}.png", optimize=True)
    np.savez_compressed(out / "inputs.npz", embed_target=inputs["embed_target"], embed_pred=inputs["embed_pred"])


def to_float(images: np.ndarray):
    """uint8 (N, H, W, 3) -> float32 torch (N, 3, H, W) in [0, 1], as the published all_images.pt files hold."""
    import torch

    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).contiguous()


# ----------------------------------------------------------------------------------------------- references
#: the files of the references this script reads (a mirror may lack large unrelated files, e.g. figures)
NEEDED = ["src/final_evaluations.ipynb", "src/utils.py", "src/Reconstruction_Metrics.py", "hubconf.py",
          "src/resnet50.py"]


def extract(path: Path, into: Path) -> Path:
    """A checkout is used as is; from a bare git directory the files in NEEDED that its HEAD has are extracted."""
    path = path.resolve()
    if (path / "HEAD").is_file() and (path / "objects").is_dir():
        git = ["git", f"--git-dir={path}"]
        tree = set(subprocess.run([*git, "ls-tree", "-r", "--name-only", "HEAD"], check=True, capture_output=True,
                                  text=True).stdout.split())
        for name in (n for n in NEEDED if n in tree):
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            (into / name).write_bytes(subprocess.run([*git, "cat-file", "blob", f"HEAD:{name}"], check=True,
                                                     capture_output=True).stdout)
        return into
    return path


def git_head(path: Path) -> str | None:
    for args in (["--git-dir", str(path)], ["-C", str(path)]):
        r = subprocess.run(["git", *args, "rev-parse", "HEAD"], capture_output=True, text=True)
        if r.returncode == 0:
            return r.stdout.strip()
    return None


def find_cell(cells: list[str], marker: str | tuple, where: str) -> tuple[int, str]:
    """The one cell containing the marker (every marker of a tuple)."""
    markers = (marker,) if isinstance(marker, str) else marker
    hits = [(i, c) for i, c in enumerate(cells) if all(m in c for m in markers)]
    if len(hits) != 1:
        raise SystemExit(f"{where}: expected one cell containing {markers!r}, found {len(hits)}")
    return hits[0]


def notebook_cells(path: Path) -> list[str]:
    nb = json.loads(path.read_text())
    return ["".join(c["source"]) if c["cell_type"] == "code" else "" for c in nb["cells"]]


def script_cells(path: Path) -> list[str]:
    """A notebook exported as a script (``# In[N]:`` markers) split into its cells."""
    return re.split(r"^# In\[[^\]]*\]:\s*$", path.read_text(), flags=re.M)


def functions_module(path: Path, names: list[str], name: str) -> types.ModuleType:
    """A module holding only the named top-level functions of a source file (imports it needs: numpy, torch, os,
    random)."""
    tree = ast.parse(path.read_text())
    defs = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
    missing = set(names) - {d.name for d in defs}
    if missing:
        raise SystemExit(f"{path}: no function(s) {sorted(missing)}")
    import os
    import random

    import torch

    mod = types.ModuleType(name)
    mod.__dict__.update(np=np, torch=torch, os=os, random=random)
    exec(compile(ast.Module(body=defs, type_ignores=[]), str(path), "exec"), mod.__dict__)
    return mod


# ----------------------------------------------------------------------------------------------- redirections
class Redirect:
    """Seeded weights in place of every download the metric cells make; records what was asked for."""

    ENUMS = {"AlexNet_Weights": "alexnet", "Inception_V3_Weights": "inception", "EfficientNet_B1_Weights": "effnet"}

    def __init__(self, seeded, swav_dir: Path | None):
        self.seeded, self.swav_dir, self.asked = seeded, swav_dir, []

    def state(self, family):
        import torch

        return {k: torch.from_numpy(v.copy()) for k, v in self.seeded.seeded_state_dict(family).items()}

    @contextlib.contextmanager
    def active(self):
        import torch
        from torchvision.models import _api

        orig_get = _api.WeightsEnum.get_state_dict
        orig_hub, orig_url = torch.hub.load, torch.hub.load_state_dict_from_url
        redirect = self

        def get_state_dict(self, *args, **kwargs):
            family = redirect.ENUMS[type(self).__name__]
            redirect.asked.append(f"{type(self).__name__}.{self.name}")
            return redirect.state(family)

        def hub_load(repo, model, *args, **kwargs):
            if repo != "facebookresearch/swav:main" or model != "resnet50":
                raise RuntimeError(f"unexpected torch.hub.load({repo!r}, {model!r})")
            redirect.asked.append(f"torch.hub.load({repo!r}, {model!r})")
            if redirect.swav_dir is None:
                raise SystemExit("SwAV: pass the facebookresearch/swav checkout as a --reference")
            return orig_hub(str(redirect.swav_dir), model, *args, source="local", **kwargs)

        def from_url(url, *args, **kwargs):
            redirect.asked.append(f"load_state_dict_from_url({url.rsplit('/', 1)[-1]})")
            return {f"module.{k}": v for k, v in redirect.state("swav").items()}

        _api.WeightsEnum.get_state_dict = get_state_dict
        torch.hub.load, torch.hub.load_state_dict_from_url = hub_load, from_url
        try:
            yield
        finally:
            _api.WeightsEnum.get_state_dict = orig_get
            torch.hub.load, torch.hub.load_state_dict_from_url = orig_hub, orig_url


class Recorder:
    """Records, per cell, what ``numpy.corrcoef`` and ``scipy.spatial.distance.correlation`` return while the cells
    run (the per-image values behind each mean; the values themselves are untouched)."""

    def __init__(self):
        self.calls: dict[str, list] = {}
        self.cell = None

    @contextlib.contextmanager
    def active(self):
        import scipy.spatial.distance as ssd

        orig_corr, orig_dist = np.corrcoef, ssd.correlation

        def corrcoef(*args, **kwargs):
            out = orig_corr(*args, **kwargs)
            self.calls.setdefault(self.cell, []).append(("corrcoef", out))
            return out

        def correlation(*args, **kwargs):
            out = orig_dist(*args, **kwargs)
            self.calls.setdefault(self.cell, []).append(("correlation", out))
            return out

        np.corrcoef, ssd.correlation = corrcoef, correlation
        try:
            yield self
        finally:
            np.corrcoef, ssd.correlation = orig_corr, orig_dist

    def values(self, cell: str, kind: str) -> list:
        return [v for k, v in self.calls.get(cell, []) if k == kind]


def run_cells(cells: list[tuple[str, str]], namespace: dict, recorder: Recorder | None = None) -> dict:
    for where, source in cells:
        if recorder is not None:
            recorder.cell = where
        try:
            exec(compile(source, where, "exec"), namespace)
        except Exception as e:
            raise SystemExit(f"{where} failed: {type(e).__name__}: {e}") from e
    return namespace


def per_image(rec: Recorder, cells: dict, ns: dict, n: int) -> dict:
    """The per-image values behind each metric: PixCorr r, SSIM, EffNet-B / SwAV distances (lists of N), and the
    (N, N) correlation matrices of identification, r[i][j] = ground truth i with reconstruction j."""
    ident = {}
    for key, cell, k in (("alexnet2", "alexnet", 0), ("alexnet5", "alexnet", 1), ("inception", "inception", 0)):
        full = rec.values(cells[cell][0], "corrcoef")[k]
        ident[key] = full[:n, n:].tolist()
    return {"pixcorr": [float(r[0][1]) for r in rec.values(cells["pixcorr"][0], "corrcoef")],
            "ssim": [float(v) for v in ns["ssim_score"]],
            "effnet": [float(v) for v in rec.values(cells["effnet"][0], "correlation")],
            "swav": [float(v) for v in rec.values(cells["swav"][0], "correlation")],
            "identification_r": ident}


def base_namespace(**arrays) -> dict:
    import scipy as sp
    import torch
    import torch.nn as nn
    from torchvision import transforms
    from tqdm import tqdm

    return {"__name__": "reference_cells", "np": np, "torch": torch, "nn": nn, "transforms": transforms,
            "tqdm": tqdm, "sp": sp, "device": "cpu", **arrays}


# ----------------------------------------------------------------------------------------------- diagnostics
def margins(identification_r: dict) -> dict:
    """Smallest |r[i, j] - r[j, j]| (i != j) of each identification metric: how far every comparison that decides
    the score is from flipping."""
    out = {}
    for key, r in identification_r.items():
        r = np.asarray(r)
        d = np.abs(r - np.diag(r)[None, :])
        d[np.arange(len(r)), np.arange(len(r))] = np.inf
        out[key] = float(d.min())
    return out


# ----------------------------------------------------------------------------------------------- main
def make_env(path: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    pip = [str(path / "bin" / "python"), "-m", "pip", "install"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, *ENV], check=True)
    print(f"environment ready: {path}/bin/python {Path(__file__).relative_to(ROOT)} --reference ...")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", action="append", type=Path, default=[],
                   help="a checkout or bare git dir of MedARC-AI/MindEyeV2, MedARC-AI/fMRI-reconstruction-NSD "
                        "(optional: its cells are run as a cross-check) and facebookresearch/swav (repeat)")
    p.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "nsd_suite_reference")
    p.add_argument("--make-env", type=Path, metavar="DIR", help="create the reference environment at DIR and exit")
    args = p.parse_args()
    if args.make_env:
        make_env(args.make_env)
        return
    import scipy
    import skimage
    import torch
    import torchvision

    if not torchvision.__version__.startswith(("0.15.", "0.16.")):
        raise SystemExit(f"torchvision {torchvision.__version__}: run in the reference environment (0.15 / 0.16, "
                         "whose tensor Resize did not antialias); see --make-env")
    torch.set_num_threads(2)
    spec = importlib.util.spec_from_file_location("seeded_weights", ROOT / "tests" / "seeded_weights.py")
    seeded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seeded)

    with tempfile.TemporaryDirectory() as tmp:
        refs, heads = {}, {}
        for i, path in enumerate(args.reference):
            root = extract(path, Path(tmp) / f"ref{i}")
            if (root / "src" / "final_evaluations.ipynb").is_file():
                refs["mindeye2"] = root
            elif (root / "src" / "Reconstruction_Metrics.py").is_file():
                refs["mindeye1"] = root
            elif (root / "hubconf.py").is_file() and "swav" in (root / "hubconf.py").read_text():
                refs["swav"] = root
            else:
                raise SystemExit(f"{path}: neither MindEyeV2, fMRI-reconstruction-NSD nor swav")
            heads[next(k for k, v in refs.items() if v == root)] = git_head(path)
        if "mindeye2" not in refs:
            raise SystemExit("pass the MindEyeV2 checkout (--reference)")
        result = run(refs, heads, seeded, args.out)
    result["versions"] = {"python": sys.version.split()[0], "torch": torch.__version__,
                          "torchvision": torchvision.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
                          "scikit-image": skimage.__version__}
    (args.out / "reference.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("plain", "enhanced", "retrieval_summary")}, indent=1))


def run(refs: dict, heads: dict, seeded, out: Path) -> dict:
    import torch

    inputs = make_inputs()
    out.mkdir(parents=True, exist_ok=True)
    save_inputs(inputs, out)
    gt, rec, blurry = (to_float(inputs[k]) for k in ("ground_truth", "reconstructions", "blurry"))
    redirect = Redirect(seeded, refs.get("swav"))
    provenance = {}

    nb_path = refs["mindeye2"] / "src" / "final_evaluations.ipynb"
    nb = notebook_cells(nb_path)
    markers = {"resize_and_blend": ("all_blurryrecons", "model_name_plus_suffix", "Resize((imsize,imsize))"),
               "two_way_identification": "def two_way_identification", "pixcorr": "all_images_flattened",
               "ssim": "structural_similarity", "alexnet": "AlexNet_Weights", "inception": "Inception_V3_Weights",
               "effnet": "EfficientNet_B1_Weights", "swav": "facebookresearch/swav",
               "retrieval": "percent_correct_fwds"}
    me2 = {}
    for key, marker in markers.items():
        i, source = find_cell(nb, marker, str(nb_path))
        me2[key] = (f"MindEyeV2/src/final_evaluations.ipynb[cell {i}]", source)
        provenance[f"mindeye2:{key}"] = {"cell": i, "sha256": hashlib.sha256(source.encode()).hexdigest()}
    metric_cells = [me2[k] for k in ("resize_and_blend", "two_way_identification", "pixcorr", "ssim", "alexnet",
                                     "inception", "effnet", "swav")]
    names = {"pixcorr": "pixcorr", "ssim": "ssim", "alexnet2": "alexnet2", "alexnet5": "alexnet5",
             "inception": "inception", "effnet": "effnet", "swav": "swav"}
    result = {"seed": seeded.SEED, "weights_sha256": {f: seeded.digest(seeded.seeded_state_dict(f))
                                                     for f in seeded.FAMILIES},
              "references": heads, "cells": provenance}
    for scenario, suffix in (("plain", "reference_fixture_all_recons"),
                             ("enhanced", "reference_fixture_all_enhancedrecons")):
        ns = base_namespace(all_images=gt.clone(), all_recons=rec.clone(), all_blurryrecons=blurry.clone(),
                            model_name_plus_suffix=suffix)
        redirect.asked.clear()
        recorder = Recorder()
        with redirect.active(), recorder.active(), torch.no_grad():
            run_cells(metric_cells, ns, recorder)
        result[scenario] = {m: float(ns[v]) for m, v in names.items()}
        result[f"{scenario}_per_image"] = per_image(recorder, me2, ns, len(gt))
        result[f"{scenario}_weights_asked"] = sorted(set(redirect.asked))
        result[f"{scenario}_identification_margins"] = margins(result[f"{scenario}_per_image"]["identification_r"])
        if scenario == "plain":
            gt256, rec256 = ns["all_images"].clone(), ns["all_recons"].clone()

    if "mindeye1" in refs:  # the same metrics through MindEye1's cells (its PixCorr cell loops over range(982))
        path = refs["mindeye1"] / "src" / "Reconstruction_Metrics.py"
        cells = script_cells(path)
        me1 = []
        for key, marker in (("two_way_identification", "def two_way_identification"),
                            ("ssim", "structural_similarity"), ("alexnet", "AlexNet_Weights"),
                            ("inception", "Inception_V3_Weights"), ("effnet", "EfficientNet_B1_Weights"),
                            ("swav", "facebookresearch/swav")):
            i, source = find_cell(cells, marker, str(path))
            me1.append((f"fMRI-reconstruction-NSD/src/Reconstruction_Metrics.py[cell {i}]", source))
            provenance[f"mindeye1:{key}"] = {"cell": i, "sha256": hashlib.sha256(source.encode()).hexdigest()}
        ns = base_namespace(all_images=gt256.clone(), all_brain_recons=rec256.clone())
        with redirect.active(), torch.no_grad():
            run_cells(me1, ns)
        result["mindeye1_cells"] = {m: float(ns[v]) for m, v in names.items() if m != "pixcorr"}
        result["mindeye1_cells_note"] = ("MindEye1's cells on the ground truths and reconstructions after MindEye2's "
                                         "resize cell (MindEye1's own resize cell also plots fixed NSD indices, and "
                                         "its PixCorr cell loops over range(982): neither runs on 8 images)")

    utils = functions_module(refs["mindeye2"] / "src" / "utils.py",
                             ["seed_everything", "batchwise_cosine_similarity", "topk"], "utils")
    utils.seed_everything(42)  # the notebook's --seed default, set in its argument cell
    ns = base_namespace(all_images=torch.from_numpy(inputs["embed_target"]),
                        all_clipvoxels=torch.from_numpy(inputs["embed_pred"]), clip_img_embedder=lambda x: x,
                        utils=utils)
    with contextlib.redirect_stdout(io.StringIO()):
        run_cells([me2["retrieval"]], ns)
    fwd, bwd = [float(v) for v in ns["percent_correct_fwds"]], [float(v) for v in ns["percent_correct_bwds"]]
    result["retrieval"] = {"fwd_per_draw": fwd, "bwd_per_draw": bwd,
                           "fwd_mean": float(ns["percent_correct_fwd"]), "fwd_sd": float(ns["fwd_sd"]),
                           "fwd_ci": [float(v) for v in ns["fwd_ci"]],
                           "bwd_mean": float(ns["percent_correct_bwd"]), "bwd_sd": float(ns["bwd_sd"]),
                           "bwd_ci": [float(v) for v in ns["bwd_ci"]]}
    sims = np.asarray(ns["fwd_sim"])  # last draw: row i = image i against every brain embedding
    result["retrieval_summary"] = {"image_retrieval (fwd)": result["retrieval"]["fwd_mean"],
                                   "brain_retrieval (bwd)": result["retrieval"]["bwd_mean"],
                                   "last_draw_row0_argmax": int(sims[0].argmax())}
    return result


if __name__ == "__main__":
    main()
