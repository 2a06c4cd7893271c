#!/usr/bin/env python
"""Write the fixtures that prove mindvis' brain module equal to brainmagick's ``SimpleConv`` (clip_conv).

brainmagick's own code makes every number here: the script takes a brainmagick checkout (or its bare git directory,
extracted to a temporary folder at run time), imports its model, loss and scaler modules from there, builds a small
clip_conv model from brainmagick's own hydra configuration, runs it, trains it two steps through flashy's solver
machinery (whose ``commit`` writes ``checkpoint.th``) and saves what it computed. Nothing of brainmagick is copied
into this repository.

It runs in a venv of its own, never mindvis'::

    python3.11 -m venv /work/refenv/brainmagick
    /work/refenv/brainmagick/bin/pip install torch==2.13.0 mne flashy hydra-core pandas
    /work/refenv/brainmagick/bin/python tools/reference_fixtures/brainmagick.py \\
        --reference /path/to/brainmagick[.git] --out tests/fixtures/brainmagick

What is imported and what is stood in for: ``bm/__init__.py``, ``bm/models/__init__.py`` and
``bm/features/__init__.py`` import brainmagick's data pipeline (studies, spaCy < 2.4, wordfreq, transformers,
torchaudio), which this Python cannot install; the script registers the packages ``bm``, ``bm.models``,
``bm.features`` and ``bm.studies`` as empty packages pointing at the extracted folders, so that the real files
``bm/models/common.py``, ``bm/models/simpleconv.py``, ``bm/losses.py``, ``bm/utils.py``, ``bm/events.py``,
``bm/features/base.py`` and ``bm/norm.py`` import unchanged. Stand-ins: ``bm.studies.api.Recording`` (a type
annotation in common.py), ``bm.dataset.SegmentBatch`` (annotations in norm.py), and ``torchaudio`` when it is not
installed (simpleconv.py uses it only with ``n_fft``, events.py only to read sound files). The checkpoint is written by
flashy's ``BaseSolver.commit`` inside a real dora XP whose ``cfg`` is brainmagick's hydra config composed by hydra,
with the stateful attributes bm/solver.py registers (``all_models``, ``optimizer``, ``best_state``, ``scaler``,
``loss``, ``last_test_epoch``, ``best_epoch``, ``best_loss``) holding the same kinds of objects: brainmagick's
``bm.solver.Solver`` itself needs the datasets, so a small flashy solver registers them instead, and the scaler is a
real ``bm.norm.BatchScaler`` whose ``FeaturesBuilder`` (real class) has no features (brainmagick has no image
feature; a speech run would hold Wav2Vec features there).
"""
from __future__ import annotations

import argparse
import copy
import importlib
import json
import math
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

import numpy as np

N_SUBJECTS = 3
N_TIMES = 40
OUT_CHANNELS = 8  # the "feature" dimension (brainmagick's out_channels)
SIZES = ["simpleconv.hidden.meg=16", "simpleconv.depth=6", "simpleconv.merger_channels=12",
         "simpleconv.merger_pos_dim=32", "simpleconv.initial_linear=10"]
SEED_INPUTS, SEED_TRAIN, SEED_DROPOUT = 1234, 77, 78


# ----------------------------------------------------------------------------- brainmagick's code, imported
def extract(reference: Path, into: Path) -> tuple[Path, str]:
    """(folder holding bm/, commit) of a checkout or of a bare git directory (extracted with git archive)."""
    if (reference / "bm" / "models" / "simpleconv.py").is_file():
        commit = subprocess.run(["git", "-C", str(reference), "rev-parse", "HEAD"], capture_output=True,
                                text=True).stdout.strip() or "unknown (not a git checkout)"
        return reference, commit
    git = ["git", "--git-dir", str(reference)]
    commit = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    archive = subprocess.run(git + ["archive", "--format=tar", "HEAD", "bm"], capture_output=True, check=True).stdout
    tar_path = into / "bm.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(into, filter="data")
    return into, commit


def _package(name: str, path: Path | None = None) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__path__ = [str(path)] if path else []
    sys.modules[name] = mod
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, mod)
    return mod


def import_brainmagick(root: Path) -> types.SimpleNamespace:
    """brainmagick's modules, imported from ``root/bm`` without its package __init__ files (see the docstring)."""
    bm = root / "bm"
    _package("bm", bm)
    _package("bm.models", bm / "models")
    _package("bm.features", bm / "features")
    _package("bm.studies", bm / "studies")
    api = types.ModuleType("bm.studies.api")

    class Recording:  # only a type annotation in bm/models/common.py
        pass

    api.Recording = Recording
    sys.modules["bm.studies.api"] = api
    dataset = types.ModuleType("bm.dataset")

    class SegmentBatch:  # only annotations in bm/norm.py
        pass

    dataset.SegmentBatch = SegmentBatch
    sys.modules["bm.dataset"] = dataset
    try:
        import torchaudio  # noqa: F401
    except ImportError:
        ta = types.ModuleType("torchaudio")

        class _Unavailable:
            def __init__(self, *a, **k):
                raise RuntimeError("torchaudio is not installed (brainmagick's n_fft option needs it)")

        ta.transforms = types.SimpleNamespace(Spectrogram=_Unavailable)
        ta.info = _Unavailable
        sys.modules["torchaudio"] = ta
    ns = types.SimpleNamespace()
    ns.common = importlib.import_module("bm.models.common")
    ns.simpleconv = importlib.import_module("bm.models.simpleconv")
    ns.losses = importlib.import_module("bm.losses")
    ns.utils = importlib.import_module("bm.utils")
    base = importlib.import_module("bm.features.base")
    sys.modules["bm.features"].FeaturesBuilder = base.FeaturesBuilder
    sys.modules["bm.features"].Feature = base.Feature
    ns.features_base = base
    ns.norm = importlib.import_module("bm.norm")
    return ns


def compose_config(root: Path, overrides: list[str]):
    """brainmagick's configuration (bm/conf/config.yaml and its defaults) composed by hydra, as dora's hydra_main
    gives it to bm/train.py."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(root / "bm" / "conf"), version_base="1.1"):
        return compose("config", overrides=overrides)


# ----------------------------------------------------------------------------- inputs
class FixtureRecording:
    """What brainmagick's PositionGetter reads of a recording."""

    def __init__(self, index: int, info):
        self.recording_index, self.mne_info, self.recording_uid = index, info, f"fixture-{index}"

    def study_name(self) -> str:
        return "fixture"


class FixtureBatch:
    """What SimpleConv and its ChannelMerger read of a batch: meg, subject_index, _recordings."""

    def __init__(self, meg, subject_index, recordings):
        self.meg, self.subject_index, self._recordings = meg, subject_index, recordings

    def __len__(self):
        return len(self.meg)


def ctf_info(names: list[str]):
    """An MNE info of CTF axial gradiometers (what find_layout takes for the CTF-275 layout), THINGS-MEG-style names
    (``MLC11-1609``)."""
    import mne
    from mne.io.constants import FIFF

    info = mne.create_info([f"{n}-1609" for n in names], 120.0, "mag")
    with info._unlock():
        for ch in info["chs"]:
            ch["coil_type"] = FIFF.FIFFV_COIL_CTF_GRAD
    return info


def montages() -> list[list[str]]:
    """Three recordings of 14 channels: A with a channel the CTF-275 layout lacks (masked), A reordered with one more
    real channel, and another set B with a position-less channel elsewhere."""
    import mne

    names = [n.split("-")[0] for n in mne.channels.read_layout("CTF-275").names]
    a = names[0:260:20]  # 13
    rng = np.random.default_rng(0)
    rec0 = a[:5] + ["MXX01"] + a[5:]
    rec1 = [a[i] for i in rng.permutation(len(a))] + [names[270]]
    b = names[7:273:19]  # 14
    rec2 = b[:9] + ["MZZ99"] + b[10:]
    return [rec0, rec1, rec2]


# ----------------------------------------------------------------------------- runs
def state_arrays(prefix: str, state: dict) -> dict:
    return {f"{prefix}/{k}": v.detach().cpu().clone().numpy() for k, v in state.items()}


def perturb_batch_norms(model, gen) -> None:
    """Give every batch norm non-trivial affine weights and running statistics (the init has 1, 0, 0, 1)."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


def run_model(model, x, batch, prefix: str, stages: bool = True) -> dict:
    """Output of the model and of its stages (forward hooks)."""
    import torch

    seen = {}
    hooks = []
    if stages:
        for name, mod in (("merger", model.merger), ("initial_linear", model.initial_linear),
                          ("subject_layers", model.subject_layers), ("encoder", model.encoders["meg"])):
            if mod is not None:
                hooks.append(mod.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.detach())))
    with torch.no_grad():
        out = model({"meg": x.clone()}, batch)
    for h in hooks:
        h.remove()
    res = {f"{prefix}/output": out.numpy()}
    res.update({f"{prefix}/{k}": v.numpy() for k, v in seen.items()})
    return res


def build(bm, cfg, n_channels: int, **changes):
    """SimpleConv as bm/train.py builds it (seeded with cfg.seed), with ``changes`` to cfg.simpleconv."""
    import torch
    from omegaconf import OmegaConf

    params = OmegaConf.to_container(cfg.simpleconv, resolve=True)
    params.update(changes)
    torch.manual_seed(cfg.seed)
    return bm.simpleconv.SimpleConv(in_channels=dict(meg=n_channels), out_channels=OUT_CHANNELS,
                                    n_subjects=N_SUBJECTS, **params)


def write_checkpoint(bm, cfg, overrides, model, batch, x, feats, valid, work: Path) -> tuple[Path, dict]:
    """Two epochs of one step through a flashy solver registering bm/solver.py's stateful attributes; flashy's
    ``commit`` writes checkpoint.th. Epoch 2 steps up the validation loss, so that best_state (epoch 1) and the
    last state differ."""
    import flashy
    import pandas as pd
    import torch
    from dora.conf import DoraConfig
    from dora.xp import XP
    from omegaconf import OmegaConf

    class FixtureSolver(flashy.BaseSolver):
        def __init__(self, args, model, optimizer, loss, scaler):
            super().__init__()
            self.args = args
            self.model = model
            self.all_models = torch.nn.ModuleList([model, None])  # bm/solver.py: [model, feature_model]
            self.optimizer = optimizer
            self.best_state = None
            self.loss = loss
            self.scaler = scaler
            self.last_test_epoch = 0
            self.best_epoch = 0
            self.best_loss = float("inf")
            self.register_stateful('all_models', 'optimizer', 'best_state', 'scaler', 'loss', 'last_test_epoch',
                                   'best_epoch', 'best_loss')

    kw = dict(cfg.clip)
    kw.pop("save_best", None)
    kw.pop("sync_grad", None)
    loss = bm.losses.ClipLoss(**kw, dset_args=cfg.dset)
    optimizer = torch.optim.Adam(list(model.parameters()), lr=cfg.optim.lr, betas=(0.9, cfg.optim.beta2))
    optimizer.add_param_group({"params": loss.parameters()})  # bm/solver.py adds the loss' (none for clip)
    events = pd.DataFrame({"kind": pd.Series([], dtype=str), "start": pd.Series([], dtype=float),
                           "duration": pd.Series([], dtype=float)})
    builder = bm.features_base.FeaturesBuilder(events, [], {}, bm.utils.Frequency(cfg.dset.sample_rate))
    scaler = bm.norm.BatchScaler(features_builder=builder, **OmegaConf.to_container(cfg.norm.scaler))
    for r in range(N_SUBJECTS):  # one robust scaler per recording, fitted on its samples
        meg = x[batch.subject_index == r]
        scaler.meg_scalers[r] = bm.norm.RobustScaler().fit(meg.permute(0, 2, 1).reshape(-1, meg.shape[1]))
    delta = [tuple(o.split("=", 1)) for o in overrides]
    xp = XP(dora=DoraConfig(dir=work / "outputs", exclude=list(cfg.dora.exclude)), cfg=cfg, argv=overrides,
            delta=delta)
    (vx, vfeats, vbatch) = valid
    mask = torch.ones(1, dtype=torch.bool)
    with xp.enter():
        solver = FixtureSolver(cfg, model, optimizer, loss, scaler)
        for epoch, lr in ((1, cfg.optim.lr), (2, 3e-3)):
            for g in optimizer.param_groups:
                g["lr"] = lr

            def train_stage():
                solver.all_models.train(True)
                torch.manual_seed(SEED_TRAIN + epoch)
                est = model({"meg": x.clone()}, batch)
                value = loss(est, feats, mask)
                # epoch 2 steps up the validation loss instead, so that the last state is not the best
                objective = value if epoch == 1 else -loss(model({"meg": vx.clone()}, vbatch), vfeats, mask)
                optimizer.zero_grad()
                objective.backward()
                optimizer.step()
                return {"loss": value.item()}

            def valid_stage():
                solver.all_models.train(False)
                with torch.no_grad():
                    value = loss(model({"meg": vx.clone()}, vbatch), vfeats, mask).item()
                if value < solver.best_loss:  # bm/solver.py _run_one_epoch
                    solver.best_loss = value
                    solver.best_epoch = solver.epoch
                    solver.best_state = bm.utils.copy_state(solver.all_models.state_dict())
                return {"loss": value}

            solver.run_stage("train", train_stage)
            solver.run_stage("valid", valid_stage)
            solver.commit()
        summary = {"best_epoch": solver.best_epoch, "epochs": len(solver.history), "history": solver.history,
                   "sig": xp.sig}
        path = solver.checkpoint_path
    if summary["best_epoch"] != 1:
        raise RuntimeError(f"expected the best state at epoch 1, got {summary['best_epoch']}: {summary['history']}")
    return path, summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", required=True, type=Path, help="brainmagick checkout or bare git directory")
    p.add_argument("--out", type=Path, default=Path("tests/fixtures/brainmagick"))
    args = p.parse_args(argv)

    import mne
    import torch

    work = Path(tempfile.mkdtemp(prefix="bm-fixture-"))
    root, commit = extract(args.reference.resolve(), work)
    bm = import_brainmagick(root)
    cfg = compose_config(root, SIZES)
    torch.set_num_threads(1)

    names = montages()
    recordings = [FixtureRecording(i, ctf_info(n)) for i, n in enumerate(names)]
    n_channels = len(names[0])
    order = [0, 1, 2, 2, 1, 0]  # sample -> recording (= subject)
    gen = torch.Generator().manual_seed(SEED_INPUTS)
    x = torch.randn(len(order), n_channels, N_TIMES, generator=gen)
    feats = torch.randn(len(order), OUT_CHANNELS, N_TIMES, generator=gen)
    subjects = torch.tensor(order)
    batch = FixtureBatch(x, subjects, [recordings[i] for i in order])
    vorder = [2, 0, 1, 1]
    vx = torch.randn(len(vorder), n_channels, N_TIMES, generator=gen)
    vfeats = torch.randn(len(vorder), OUT_CHANNELS, N_TIMES, generator=gen)
    vbatch = FixtureBatch(vx, torch.tensor(vorder), [recordings[i] for i in vorder])

    arrays = {"inputs/meg": x.numpy(), "inputs/subject_index": subjects.numpy(), "inputs/recording": np.array(order)}
    # -- the clip_conv model (small sizes): initial weights, then two training steps written as checkpoint.th
    model = build(bm, cfg, n_channels)
    arrays.update(state_arrays("init", model.state_dict()))
    perturb_batch_norms(model, torch.Generator().manual_seed(5))
    ckpt_path, summary = write_checkpoint(bm, cfg, SIZES, model, batch, x, feats, (vx, vfeats, vbatch), work)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    positions = model.merger.position_getter.get_positions(batch)
    arrays["inputs/positions"] = positions.numpy()  # (B, C, 2); -0.1 in both: no position (PositionGetter.INVALID)
    for which, key in (("best", "best_state"), ("last", "all_models")):
        state = {k[2:]: v for k, v in ckpt[key].items() if k.startswith("0.")}
        model.load_state_dict(state)
        model.eval()
        arrays.update(run_model(model, x, batch, f"{which}/eval"))
        trained = copy.deepcopy(model).train()
        torch.manual_seed(SEED_TRAIN)
        arrays[f"{which}/train/centre"] = torch.rand(2).numpy()  # the spatial dropout's point (one per batch)
        torch.manual_seed(SEED_TRAIN)
        arrays.update(run_model(trained, x, batch, f"{which}/train"))
    # -- the optional ChannelDropout (brainmagick's `dropout`, off in clip_conv)
    cd = build(bm, cfg, n_channels, dropout=0.3)
    perturb_batch_norms(cd, torch.Generator().manual_seed(6))
    cd.eval()
    arrays.update(state_arrays("channel_dropout/state", cd.state_dict()))
    arrays.update(run_model(cd, x, batch, "channel_dropout/eval", stages=False))
    cd.train()
    torch.manual_seed(SEED_DROPOUT)
    arrays.update(run_model(cd, x, batch, "channel_dropout/train", stages=False))
    # -- ClipLoss: extra negatives, and T = 1
    kw = dict(cfg.clip)
    clip = bm.losses.ClipLoss(**kw, dset_args=cfg.dset)
    mask = torch.ones(1, dtype=torch.bool)
    est, cand = torch.randn(5, OUT_CHANNELS, N_TIMES, generator=gen), torch.randn(7, OUT_CHANNELS, N_TIMES, generator=gen)
    est1, cand1 = torch.randn(6, 16, 1, generator=gen), torch.randn(6, 16, 1, generator=gen)
    arrays.update({"clip/estimate": est.numpy(), "clip/candidates": cand.numpy(),
                   "clip/scores": clip.get_scores(est, cand).numpy(), "clip/loss": clip(est, cand, mask).numpy(),
                   "clip/estimate_t1": est1.numpy(), "clip/candidates_t1": cand1.numpy(),
                   "clip/loss_t1": clip(est1, cand1, mask).numpy()})
    # -- the full-size clip_conv model's state-dict layout (keys and shapes; no weights)
    full_cfg = compose_config(root, [])
    full = build(bm, full_cfg, 272)
    full_shapes = {k: list(v.shape) for k, v in full.state_dict().items()}

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "checkpoint.th").write_bytes(ckpt_path.read_bytes())
    np.savez_compressed(args.out / "reference.npz", **arrays)
    meta = {
        "generator": "tools/reference_fixtures/brainmagick.py",
        "reference": {"repository": "facebookresearch/brainmagick", "commit": commit},
        "versions": {"torch": torch.__version__, "mne": mne.__version__,
                     "flashy": importlib.import_module("flashy").__version__,
                     "python": sys.version.split()[0]},
        "overrides": SIZES, "seed": int(cfg.seed), "n_subjects": N_SUBJECTS, "n_times": N_TIMES,
        "out_channels": OUT_CHANNELS, "channel_names": [[f"{n}-1609" for n in rec] for rec in names],
        "channel_dropout": 0.3, "train_seed": SEED_TRAIN, "channel_dropout_seed": SEED_DROPOUT,
        "checkpoint": {"keys": list(ckpt), "best_epoch": summary["best_epoch"], "epochs": summary["epochs"],
                       "sig": summary["sig"],
                       "types": {k: f"{type(v).__module__}.{type(v).__qualname__}" for k, v in ckpt.items()}},
        "arrays": {k: list(v.shape) for k, v in arrays.items()},
        "full_clip_conv": {"in_channels": 272, "out_channels": OUT_CHANNELS, "n_subjects": N_SUBJECTS,
                           "state_dict": full_shapes},
    }
    (args.out / "reference.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {args.out}: checkpoint.th ({(args.out / 'checkpoint.th').stat().st_size} bytes), reference.npz "
          f"({(args.out / 'reference.npz').stat().st_size} bytes), reference.json; brainmagick {commit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
