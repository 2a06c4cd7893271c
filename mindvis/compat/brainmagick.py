"""brainmagick checkpoints (facebookresearch/brainmagick, Défossez et al. 2023) as mindvis brain modules.

brainmagick's trainer (flashy's ``BaseSolver.commit``, called from ``bm/solver.py``) writes ``checkpoint.th``: a
``torch.save`` of ``{"history", "xp.cfg", "xp.sig", "all_models", "optimizer", "best_state", "scaler", "loss",
"last_test_epoch", "best_epoch", "best_loss"}``. ``all_models`` (the last epoch) and ``best_state`` (the epoch of the
lowest validation loss) are state dicts of ``ModuleList([model, feature_model])``, the model's keys prefixed ``0.``;
``xp.cfg`` is the run's hydra configuration (an omegaconf ``DictConfig``) and ``scaler`` a ``bm.norm.BatchScaler``.

The file is read with mindvis' restricted unpickler: the omegaconf, brainmagick and pandas objects become inert
stand-ins that run nothing, and the few settings only the configuration holds (the dilation growth and period, the
skip connections, the dropouts, the activation) are read from it as data. Every size comes from the tensors' shapes.
The model becomes a :class:`~mindvis.models.brain_module.BrainModule` with ``aggregation="none"``: brainmagick's
time-resolved output (N, features, T). brainmagick computes sensor positions per recording (``mne.find_layout``); a
converted module takes them with each batch (``positions=``, see
:func:`~mindvis.models.brain_module_positions.layout_positions`) unless a montage is given here.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from ..models.brain_module import BrainModule
from ..models.brain_module_config import BrainModuleConfig
from .safe_pickle import TRAINING_STATE, CheckpointError, Inert, load_torch_checkpoint

#: What a brainmagick checkpoint pickles beside tensors and training state: its configuration (omegaconf), its scaler
#: and features (bm.*, with pandas frames inside), all read as inert data.
BRAINMAGICK_STATE = TRAINING_STATE + ("omegaconf.", "bm.", "typing.Any", "pandas.")
WHICH = {"best": "best_state", "last": "all_models"}

# clip_conv settings mindvis' brain module does not implement: the value brainmagick must have for a conversion
_UNSUPPORTED = {"concatenate": False, "linear_out": False, "complex_out": True, "growth": 1.0, "rewrite": False,
                "post_skip": False, "scale": None, "groups": 1, "glu_glu": True, "gelu": True, "dual_path": 0,
                "subject_layers": True, "subject_layers_dim": "input", "subject_dim": 0, "n_fft": None,
                "merger": True, "merger_per_subject": False, "merger_penalty": 0.0, "initial_depth": 1,
                "initial_nonlin": False, "subsample_meg_channels": 0}


def omegaconf_data(obj):
    """An omegaconf container or node read through inert stand-ins -> plain dicts, lists and values (interpolations
    stay strings, missing values ``"???"``)."""
    if isinstance(obj, Inert):
        state = obj.state if isinstance(obj.state, dict) else {}
        if obj.name.startswith("omegaconf.") and obj.name.endswith(("DictConfig", "ListConfig")):
            return omegaconf_data(state.get("_content"))
        if obj.name.startswith("omegaconf.nodes."):
            return omegaconf_data(state.get("_val"))
        return obj
    if isinstance(obj, dict):
        return {k: omegaconf_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [omegaconf_data(v) for v in obj]
    return obj


def read_brainmagick_checkpoint(path: str | Path, extra_admit: tuple[str, ...] = ()) -> dict:
    """The checkpoint's contents with the configuration as plain data under ``"config"``."""
    ckpt = load_torch_checkpoint(path, "brainmagick checkpoint", BRAINMAGICK_STATE + tuple(extra_admit))
    if not isinstance(ckpt, dict) or not ({"all_models", "best_state"} & set(ckpt)):
        raise CheckpointError(f"{path}: not a brainmagick checkpoint (expected the keys of bm/solver.py's flashy "
                              f"state: all_models, best_state, xp.cfg, ...; got "
                              f"{sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__})")
    out = dict(ckpt)
    out["config"] = omegaconf_data(ckpt.get("xp.cfg"))
    return out


def _settings(path: Path, cfg) -> dict:
    if not isinstance(cfg, dict) or not isinstance(cfg.get("simpleconv"), dict):
        raise CheckpointError(f"{path}: the checkpoint holds no brainmagick configuration (xp.cfg with simpleconv): "
                              "the dilation period, skips and dropouts are only there")
    if cfg.get("model_name", "simpleconv") != "simpleconv":
        raise CheckpointError(f"{path}: model_name {cfg.get('model_name')!r}; only brainmagick's simpleconv converts")
    sc = cfg["simpleconv"]
    bad = [f"{k}={sc.get(k)!r}" for k, want in _UNSUPPORTED.items()
           if k in sc and not (sc[k] == want or (sc[k] in (None, 0, False) and want in (None, 0, False)))]
    if bad:
        raise CheckpointError(f"{path}: brainmagick settings mindvis' brain module does not implement: "
                              f"{', '.join(bad)} (it implements clip_conv: {_UNSUPPORTED})")
    return sc


def _depth(state: dict, prefix: str) -> int:
    ks = {int(m.group(1)) for k in state for m in [re.match(re.escape(prefix) + r"(\d+)\.", k)] if m}
    return max(ks) + 1 if ks else 0


def brainmagick_to_mindvis(state: dict, settings: dict, subjects=None, positions=None):
    """(BrainModule, mapped state dict) from a brainmagick SimpleConv state dict (keys without the ``0.`` prefix)
    and its ``simpleconv`` settings; raises CheckpointError (one line) on foreign or missing keys."""
    mapped = {re.sub(r"^encoders\.meg\.", "encoder.", k): v for k, v in state.items()}
    need = ("merger.heads", "subject_layers.weights", "final.2.weight")
    if not all(k in mapped for k in need):
        raise CheckpointError(f"not a brainmagick clip_conv state dict: missing {[k for k in need if k not in mapped]}")
    heads = mapped["merger.heads"]
    if heads.ndim != 2:
        raise CheckpointError(f"merger.heads has shape {tuple(heads.shape)}: per-subject merger heads "
                              "(merger_per_subject) are not implemented")
    harmonics = math.isqrt(heads.shape[1] // 2)
    if 2 * harmonics**2 != heads.shape[1]:
        raise CheckpointError(f"merger.heads has {heads.shape[1]} position features; expected 2 K^2")
    subject_w = mapped["subject_layers.weights"]
    sc = settings
    layer = 1 if sc.get("dropout_input") else 0  # conv index inside each layer's Sequential
    conv0 = mapped.get(f"encoder.sequence.0.{layer}.weight")
    if conv0 is None:
        raise CheckpointError(f"missing encoder.sequence.0.{layer}.weight (brainmagick encoders.meg.sequence.0...)")
    glu_keys = [k for k in mapped if k.startswith("encoder.glus.") and k.endswith(".0.weight")]
    glu_context = (mapped[glu_keys[0]].shape[-1] - 1) // 2 if glu_keys else int(sc.get("glu_context", 0) or 0)
    n_subjects = subject_w.shape[0]
    names = [str(s) for s in subjects] if subjects is not None else [str(i) for i in range(n_subjects)]
    if len(names) != n_subjects:
        raise CheckpointError(f"{len(names)} subject names for {n_subjects} subject layers")
    cfg = BrainModuleConfig(
        positions=list(positions) if positions is not None else [], n_times=0, dim=0, subjects=names,
        merger_channels=heads.shape[0], fourier_harmonics=harmonics,
        spatial_dropout=float(sc.get("merger_dropout", 0.0) or 0.0),
        channel_dropout=float(sc.get("dropout", 0.0) or 0.0), channel_dropout_rescale=bool(sc.get("dropout_rescale", True)),
        initial_linear=mapped["initial_linear.0.weight"].shape[0] if "initial_linear.0.weight" in mapped else 0,
        subject_layers_id=bool(sc.get("subject_layers_id", False)), hidden=conv0.shape[0],
        depth=_depth(mapped, "encoder.sequence."), kernel_size=conv0.shape[-1],
        dilation_growth=int(sc.get("dilation_growth", 1) or 1), dilation_period=int(sc.get("dilation_period") or 0),
        skip=bool(sc.get("skip", False)), batch_norm=bool(sc.get("batch_norm", False)), glu=int(sc.get("glu", 0) or 0),
        glu_context=glu_context, glu_dilation=1, conv_dropout=float(sc.get("conv_dropout", 0.0) or 0.0),
        dropout_input=float(sc.get("dropout_input", 0.0) or 0.0), features=mapped["final.2.weight"].shape[1],
        aggregation="none")
    model = BrainModule(cfg)
    own = model.state_dict()
    unexpected = sorted(set(mapped) - set(own))
    missing = sorted(set(own) - set(mapped))
    wrong = sorted(k for k in set(own) & set(mapped) if tuple(own[k].shape) != tuple(mapped[k].shape))
    if unexpected or missing or wrong:
        parts = [f"{n} {', '.join(v[:6])}{' ...' if len(v) > 6 else ''}" for n, v in
                 (("unexpected keys:", unexpected), ("missing keys:", missing), ("shapes differ:", wrong)) if v]
        raise CheckpointError("brainmagick state dict does not map onto the brain module: " + "; ".join(parts))
    model.load_state_dict(mapped)
    return model.eval(), mapped


def load_brainmagick(checkpoint: str | Path, which: str = "best", subjects=None, positions=None,
                     extra_admit: tuple[str, ...] = ()) -> tuple[BrainModule, dict]:
    """(BrainModule in eval mode, the checkpoint's plain-data configuration) of a brainmagick ``checkpoint.th``:
    the weights of the best validation epoch (``which="best"``) or of the last (``"last"``). ``subjects``: names for
    the subject layers (default ``"0"``, ``"1"``, ... = brainmagick's subject_index); ``positions``: a default
    montage (C, 2)."""
    path = Path(checkpoint)
    if which not in WHICH:
        raise ValueError(f"which must be one of {sorted(WHICH)}, got {which!r}")
    ckpt = read_brainmagick_checkpoint(path, extra_admit)
    settings = _settings(path, ckpt["config"])
    state = ckpt.get(WHICH[which])
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: no {WHICH[which]} in this checkpoint (which={which!r}; best_state is set "
                              "after the first validation epoch)")
    foreign = sorted(k for k in state if not k.startswith("0."))
    if foreign:
        raise CheckpointError(f"{path}: {WHICH[which]} holds keys outside the brain model (a feature model?): "
                              f"{', '.join(foreign[:6])}{' ...' if len(foreign) > 6 else ''}")
    try:
        model, _ = brainmagick_to_mindvis({k[2:]: v for k, v in state.items()}, settings, subjects, positions)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return model, ckpt["config"]


def convert_brainmagick(checkpoint: str | Path, out_dir: str | Path, which: str = "best", subjects=None,
                        positions=None) -> Path:
    """``mindvis-convert from-brainmagick``: the brain module folder (``save_pretrained``) of a brainmagick
    checkpoint, with its configuration beside it as ``brainmagick_config.json`` (plain data)."""
    from ..utils.io import atomic_write_json

    model, config = load_brainmagick(checkpoint, which, subjects, positions)
    out = Path(out_dir)
    model.save_pretrained(out)
    atomic_write_json(out / "brainmagick_config.json", json.loads(json.dumps(config, default=repr)))
    return out
