"""``mindvis-convert from-mindeye1 / from-mindeye2``: a released MindEye checkpoint into a MindEye run folder that
``mindvis-align --score`` scores."""
from __future__ import annotations

from pathlib import Path

from mindvis.config import save_config
from mindvis.data.fmri import DataError
from mindvis.utils.io import atomic_dir

from .mindeye_models import save_model_folder


def convert_to_run(family: str, ckpt: str | Path, out: str | Path, lowlevel: str | Path | None = None,
                   subject: int | None = None, data_path: str | None = None, target: str | None = None,
                   overwrite: bool = False) -> str:
    """``mindvis-convert from-mindeye1 / from-mindeye2``: a released checkpoint (read without running pickled code,
    strict key mapping, sizes from the tensors) into a MindEye run folder that ``mindvis-align --score OUT`` scores:
    ``model/`` (the components), ``config.yaml`` (the recipe's preset with the checkpoint's sizes, the data path
    and target space when given). Refuses an existing OUT unless ``overwrite`` (then replaced only once the new
    folder is complete). Returns a one-line summary (the parameter counts)."""
    from mindvis.compat.mindeye import load_mindeye1, load_mindeye2
    from mindvis.config import build_config
    from mindvis.configs import preset_path

    from .config import AlignConfig

    out = Path(out)
    if out.exists() and not overwrite:
        raise DataError(f"{out} exists already: give --overwrite to replace it (or another folder)")
    if family == "mindeye1":
        ck = load_mindeye1(ckpt)
        if ck.network is None:
            raise DataError(f"{ckpt} is a MindEye1 low-level (autoencoder) checkpoint: give the prior checkpoint "
                            "(prior_*/last.pth) as CKPT and this one as --lowlevel")
        low = None
        if lowlevel:
            low = load_mindeye1(lowlevel).lowlevel
            if low is None:
                raise DataError(f"--lowlevel {lowlevel} is not a MindEye1 low-level (autoencoder) checkpoint")
    else:
        ck, low = load_mindeye2(ckpt, subject=subject), None
    net, prior = ck.network, ck.prior
    c = net.config
    sizes = {"mindeye.hidden": c.hidden, "mindeye.blocks": c.n_blocks}
    if family == "mindeye1":
        sizes["mindeye.projector_hidden"] = c.projector_hidden
    else:
        sizes["mindeye.blurry"] = c.blurry_recon
        if c.blurry_recon:
            sizes |= {"mindeye.blurry_channels": c.blurry_channels, "mindeye.blurry_side": c.blurry_side,
                      "mindeye.blurry_decoder_channels": "[" + ",".join(map(str, c.blurry_decoder_channels)) + "]",
                      "mindeye.blurry_maps_hidden": c.blurry_maps_hidden, "mindeye.blurry_maps_dim": c.blurry_maps_dim}
    if prior is not None:
        pc = prior.config
        sizes |= {"mindeye.prior_depth": pc.depth, "mindeye.prior_dim_head": pc.dim_head,
                  "mindeye.prior_timesteps": pc.timesteps}
    else:
        sizes["mindeye.prior"] = False
    flags = {"data.path": data_path, "target": target}
    overrides = [f"{k}={v}" for k, v in {**sizes, **flags}.items() if v is not None and v != ""]
    cfg = build_config(AlignConfig, preset_path("align", family), overrides)
    extra = {"source": str(ckpt), "epoch": ck.epoch, "subjects": (ck.subjects if family == "mindeye2" else [0]),
             "converted_from": {"checkpoint": str(ckpt), **({"lowlevel": str(lowlevel)} if lowlevel else {}),
                                **({"subject": subject} if subject is not None else {})}}

    def fill(tmp: Path):
        save_model_folder(tmp / "model", family, net, prior, low, extra)
        save_config(cfg, tmp / "config.yaml")

    atomic_dir(out, fill)
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in
              (("network", net), ("prior", prior), ("lowlevel", low)) if m is not None}
    return (f"{Path(ckpt).name}: {family}, epoch {ck.epoch}, parameters: "
            + ", ".join(f"{k} {v:,}" for k, v in counts.items()) + f" (total {sum(counts.values()):,})")
