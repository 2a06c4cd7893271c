"""Small commands: ``mindvis-synth`` (write the synthetic world) and ``mindvis-convert`` (checkpoint formats)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import ConfigError, build_config, to_object
from .utils.cli import PlainHelpFormatter, check_output_file, check_output_folder

#: folder of each part of the synthetic world under ``mindvis-synth --out``
WORLD_PARTS = {"hcp": "HCP", "god": "GOD", "bold5000": "BOLD5000", "nsd": "NSD", "things-meg": "THINGS-MEG",
               "things-eeg2": "THINGS-EEG2"}


def _stale_parts(root: Path, parts: list[str], fingerprint: str) -> list[str]:
    """The chosen parts already under ``root`` but written with other world settings."""
    import json

    stale = []
    for part in parts:
        meta = root / WORLD_PARTS[part] / "meta.json"
        if meta.is_file():
            try:
                made = json.loads(meta.read_text()).get("fingerprint")
            except ValueError:
                made = None
            if made != fingerprint:
                stale.append(part)
    return stale


def synth_main(argv=None) -> int:
    """Write the synthetic brain world (HCP, GOD, BOLD5000, NSD, THINGS-MEG and THINGS-EEG2 layouts) into a folder."""
    from .world import (DEVICE_PRESETS, WORLD_PRESETS, SyntheticWorld, SyntheticWorldConfig, describe_devices,
                        device_overrides)

    p = argparse.ArgumentParser(
        prog="mindvis-synth", description=synth_main.__doc__,
        epilog="overrides: SyntheticWorldConfig fields as key=value, e.g. hcp_subjects=50 snr=0.5 god_subjects=5",
        formatter_class=PlainHelpFormatter)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder to write HCP/, GOD/, BOLD5000/ (and NSD/, THINGS-MEG/, THINGS-EEG2/) into; parts "
                        "already there with the same settings are kept")
    p.add_argument("--overwrite", action="store_true",
                   help="write again the parts under --out that hold a world of other settings (refused otherwise), "
                        "and write into a folder that holds something else")
    parts = ("hcp", "god", "bold5000", "nsd", "things-meg", "things-eeg2")
    p.add_argument("--parts", nargs="+", default=list(parts[:3]), metavar="{" + ",".join(parts) + "}",
                   help="which datasets to write (default: hcp god bold5000)")
    p.add_argument("--device", choices=sorted(DEVICE_PRESETS),
                   help="single-trial SNR and test repetitions of fMRI at this field strength: "
                        + describe_devices() + " (key=value overrides come after it)")
    p.add_argument("--world", choices=sorted(WORLD_PRESETS),
                   help="sizes of a release: god = 1,200 training images of 150 classes, 50 test images, 4,640 "
                        "visual voxels (the default world is smaller: 400 pairs, 1,072 voxels)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="world settings (see the module docstring)")
    args = p.parse_args(argv)
    # key=value after --parts belongs to the overrides (argparse alone would give it to --parts)
    args.overrides += [a for a in args.parts if "=" in a]
    args.parts = [a for a in args.parts if "=" not in a]
    if not args.parts or any(a not in parts for a in args.parts):
        p.error(f"argument --parts: choose from {', '.join(parts)} (got {' '.join(args.parts) or 'none'})")
    try:
        device = device_overrides(args.device, args.world)
        cfg = to_object(build_config(SyntheticWorldConfig, overrides=device + args.overrides))
        out = check_output_folder(args.out, args.overwrite,
                                  reusable=lambda d: any((d / sub).is_dir() for sub in WORLD_PARTS.values()))
        stale = _stale_parts(out, args.parts, cfg.fingerprint())
        if stale and not args.overwrite:
            sub = out / WORLD_PARTS[stale[0]]
            raise ConfigError(f"{sub} holds a synthetic world made with other settings; pass --overwrite to write "
                              f"{', '.join(WORLD_PARTS[p] for p in stale)} again with these, or choose another --out")
        world = SyntheticWorld(cfg)
        for part in stale:  # --overwrite: each replaced atomically, once the new one is complete
            getattr(world, f"write_{part.replace('-', '_')}")(out / WORLD_PARTS[part])
        root = world.write(out, args.parts)
    except (ConfigError, ValueError) as e:
        print(f"mindvis-synth: error: {e}", file=sys.stderr)
        return 2
    print(f"synthetic world written to {root} ({', '.join(args.parts)})")
    return 0


def convert_main(argv=None) -> int:
    """Convert checkpoints between the original MinD-Vis .pth format and mindvis folders: SC-MBM (stage A) both ways,
    a released stage-B DC-LDM into a folder that mindvis-sample reads, brainmagick's brain module, and the released
    MindEye1 / MindEye2 checkpoints into run folders that mindvis-align --score reads."""
    from .compat.ldm import PriorFormatError
    from .compat.original import OriginalCheckpointError, export_original_mbm, load_original_mbm
    from .config import ConfigError
    from .data.fmri import DataError
    from .models.sc_mbm import MaskedBrainModel

    p = argparse.ArgumentParser(prog="mindvis-convert", description=convert_main.__doc__,
                                formatter_class=PlainHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("from-original", help="original stage-A .pth -> mindvis model folder (safetensors)")
    a.add_argument("src", help="original checkpoint (.pth); read with a restricted unpickler")
    a.add_argument("dst", help="output model folder")
    b = sub.add_parser("to-original", help="mindvis model folder -> original stage-A .pth layout (plain-data config)")
    b.add_argument("src", help="mindvis model folder (config.json + model.safetensors) or a pretrain run folder")
    b.add_argument("dst", help="output .pth file")
    c = sub.add_parser("from-original-stage-b", help="released stage-B finetuned.pth -> a run folder for mindvis-sample",
                       description="Writes DST/model/ (the DC-LDM: unet, vae, conditioner, scheduler) and "
                                   "DST/config.yaml (the dataset settings the checkpoint was trained with, so that "
                                   "`mindvis-sample --model DST --split test` prepares the same test pairs).")
    c.add_argument("src", help="the stage-B checkpoint (finetuned.pth); read with a restricted unpickler")
    c.add_argument("dst", help="output folder")
    c.add_argument("--ldm", required=True, metavar="DIR",
                   help="the pretrained LDM folder it was fine-tuned from (label2img: config.yaml + model.ckpt); "
                        "its config gives the UNet and autoencoder architecture")
    c.add_argument("--encoder", metavar="PTH", help="the stage-A checkpoint (fmri_encoder.pth): the encoder's number "
                                                    "of attention heads is read from it (the stage-B file lacks it)")
    c.add_argument("--num-heads", type=int, help="the encoder's attention heads, when --encoder is not at hand "
                                                 "(default: the paper's 16)")
    c.add_argument("--data-path", metavar="DIR", help="the GOD folder (sbj_N.npz + images_256.npz); default: the "
                                                      "checkpoint's kam_path, relative to the original repository")
    c.add_argument("--bold5000-path", metavar="DIR", help="the BOLD5000 folder, for a BOLD5000 checkpoint")
    d = sub.add_parser("from-brainmagick", help="brainmagick checkpoint.th -> mindvis brain module folder",
                       description="Reads brainmagick's checkpoint.th (facebookresearch/brainmagick) with a restricted "
                                   "unpickler (its omegaconf config and scaler as inert data) and writes the SimpleConv "
                                   "weights as a BrainModule (aggregation none: brainmagick's time-resolved output).")
    d.add_argument("src", help="brainmagick checkpoint.th")
    d.add_argument("dst", help="output model folder")
    d.add_argument("--which", choices=("best", "last"), default="best",
                   help="the best validation epoch's weights (best_state, default) or the last epoch's (all_models)")
    for fam, ckpt_help in (("mindeye1", "MindEye1's prior_*/last.pth (voxel2clip + diffusion prior)"),
                           ("mindeye2", "MindEye2's last.pth (adapters, backbone, diffusion prior)")):
        e = sub.add_parser(f"from-{fam}", help=f"released {fam} checkpoint -> a run folder mindvis-align --score reads",
                           description="Reads the checkpoint with a restricted unpickler (no pickled code runs; its "
                                       "optimizer and scheduler states become inert data), maps its keys strictly "
                                       "(a foreign or missing key is named), reads every size from the tensors, and "
                                       "writes DST/model/ (network/, prior/ as save_pretrained folders, mindeye.json) "
                                       "and DST/config.yaml (the recipe with the checkpoint's sizes). Score it with "
                                       "mindvis-align --score DST --data-path NSD_SUBJECT.")
        e.add_argument("src", help=ckpt_help)
        e.add_argument("dst", help="output run folder (refused if it exists, unless --overwrite)")
        if fam == "mindeye1":
            e.add_argument("--lowlevel", metavar="AE_CKPT", help="the low-level model (autoencoder_*/epoch120.pth): "
                                                                 "written as DST/model/lowlevel/")
        else:
            e.add_argument("--subject", type=int, metavar="N", help="keep only adapter N of the checkpoint (0-based "
                                                                    "index into its ridge.linears); default: all")
        e.add_argument("--data-path", metavar="DIR", help="the prepared NSD subject to score on (sets data.path)")
        e.add_argument("--target", metavar="SPACE", help="the token space (default: the recipe's, "
                                                         "clip-vit-l-14-tokens / openclip-bigg-14-tokens)")
    from .compat.unclip import add_convert_commands

    mindeye2_generators = add_convert_commands(sub)  # from-unclip, from-sd-autoencoder, from-bigg-to-l
    for sp in sub.choices.values():  # every conversion writes DST: never over an existing one unasked
        sp.formatter_class = PlainHelpFormatter
        sp.add_argument("--overwrite", action="store_true",
                        help="replace an existing DST (once the new one is complete); without it an existing file "
                             "or non-empty folder is refused")
    args = p.parse_args(argv)
    try:
        from .utils.io import atomic_dir

        if getattr(args, "dst", None) is not None:
            one_file = args.cmd in ("to-original", "from-bigg-to-l")
            (check_output_file if one_file else check_output_folder)(args.dst, args.overwrite)
        if args.cmd == "from-bigg-to-l":  # one file, written atomically
            mindeye2_generators[args.cmd](args, args.dst)
        elif args.cmd in mindeye2_generators:
            atomic_dir(args.dst, lambda tmp: mindeye2_generators[args.cmd](args, tmp))
        elif args.cmd in ("from-mindeye1", "from-mindeye2"):
            from mindvis.align.mindeye_convert import convert_to_run

            print(convert_to_run(args.cmd[5:], args.src, args.dst, getattr(args, "lowlevel", None),
                                 getattr(args, "subject", None), args.data_path, args.target, args.overwrite))
        elif args.cmd == "from-brainmagick":
            from .compat.brainmagick import convert_brainmagick

            atomic_dir(args.dst, lambda tmp: convert_brainmagick(args.src, tmp, args.which))
        elif args.cmd == "from-original":
            model, _ = load_original_mbm(args.src)
            atomic_dir(args.dst, lambda tmp: model.save_pretrained(tmp))
        elif args.cmd == "to-original":
            src = Path(args.src)
            model = MaskedBrainModel.from_pretrained(src / "model" if (src / "model").is_dir() else src)
            export_original_mbm(model, args.dst)
        else:
            from .compat.ldm import convert_original_stage_b

            convert_original_stage_b(args.src, args.ldm, args.dst, args.encoder, args.num_heads, args.data_path,
                                     args.bold5000_path)
    except (FileNotFoundError, OriginalCheckpointError, DataError, PriorFormatError, ConfigError) as e:
        print(f"mindvis-convert: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst}")
    return 0
