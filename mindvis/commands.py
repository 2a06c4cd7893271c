"""Small commands: ``mindvis-synth`` (write the synthetic world) and ``mindvis-convert`` (checkpoint formats)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import ConfigError, build_config, to_object


def synth_main(argv=None) -> int:
    """Write the synthetic brain world (HCP, GOD, BOLD5000, NSD, THINGS-MEG and THINGS-EEG2 layouts) into a folder."""
    from .world import (DEVICE_PRESETS, WORLD_PRESETS, SyntheticWorld, SyntheticWorldConfig, describe_devices,
                        device_overrides)

    p = argparse.ArgumentParser(
        prog="mindvis-synth", description=synth_main.__doc__,
        epilog="overrides: SyntheticWorldConfig fields as key=value, e.g. hcp_subjects=50 snr=0.5 god_subjects=5",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder to write HCP/, GOD/, BOLD5000/ (and NSD/, THINGS-MEG/, THINGS-EEG2/) into")
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
        root = SyntheticWorld(cfg).write(args.out, args.parts)
    except (ConfigError, ValueError) as e:
        print(f"mindvis-synth: error: {e}", file=sys.stderr)
        return 2
    print(f"synthetic world written to {root} ({', '.join(args.parts)})")
    return 0


def convert_main(argv=None) -> int:
    """Convert checkpoints between the original MinD-Vis .pth format and mindvis folders: SC-MBM (stage A) both ways,
    and a released stage-B DC-LDM into a folder that mindvis-sample reads."""
    from .compat.ldm import PriorFormatError
    from .compat.original import OriginalCheckpointError, export_original_mbm, load_original_mbm
    from .config import ConfigError
    from .data.fmri import DataError
    from .models.sc_mbm import MaskedBrainModel

    p = argparse.ArgumentParser(prog="mindvis-convert", description=convert_main.__doc__)
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
    from .compat.unclip import add_convert_commands

    mindeye2_generators = add_convert_commands(sub)  # from-unclip, from-sd-autoencoder, from-bigg-to-l
    args = p.parse_args(argv)
    try:
        if args.cmd in mindeye2_generators:
            mindeye2_generators[args.cmd](args)
        elif args.cmd == "from-brainmagick":
            from .compat.brainmagick import convert_brainmagick

            convert_brainmagick(args.src, args.dst, args.which)
        elif args.cmd == "from-original":
            model, _ = load_original_mbm(args.src)
            model.save_pretrained(args.dst)
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
