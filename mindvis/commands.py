"""Small commands: ``mindvis-synth`` (write the synthetic world) and ``mindvis-convert`` (checkpoint formats)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import ConfigError, build_config, to_object


def synth_main(argv=None) -> int:
    """Write the synthetic brain world (HCP, GOD and BOLD5000 layouts) into a folder."""
    from .data.synthetic import SyntheticWorld, SyntheticWorldConfig

    p = argparse.ArgumentParser(
        prog="mindvis-synth", description=synth_main.__doc__,
        epilog="overrides: SyntheticWorldConfig fields as key=value, e.g. hcp_subjects=50 snr=0.5 god_subjects=5",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write HCP/, GOD/ and BOLD5000/ into")
    p.add_argument("--parts", nargs="+", default=["hcp", "god", "bold5000"], choices=["hcp", "god", "bold5000"],
                   help="which datasets to write (default: all)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="world settings (see the module docstring)")
    args = p.parse_args(argv)
    try:
        cfg = to_object(build_config(SyntheticWorldConfig, overrides=args.overrides))
        root = SyntheticWorld(cfg).write(args.out, args.parts)
    except (ConfigError, ValueError) as e:
        print(f"mindvis-synth: error: {e}", file=sys.stderr)
        return 2
    print(f"synthetic world written to {root} ({', '.join(args.parts)})")
    return 0


def convert_main(argv=None) -> int:
    """Convert SC-MBM checkpoints between the original MinD-Vis .pth format and mindvis model folders."""
    from .compat.original import OriginalCheckpointError, export_original_mbm, load_original_mbm
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
    args = p.parse_args(argv)
    try:
        if args.cmd == "from-original":
            model, _ = load_original_mbm(args.src)
            model.save_pretrained(args.dst)
        else:
            src = Path(args.src)
            model = MaskedBrainModel.from_pretrained(src / "model" if (src / "model").is_dir() else src)
            export_original_mbm(model, args.dst)
    except (FileNotFoundError, OriginalCheckpointError, DataError) as e:
        print(f"mindvis-convert: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst}")
    return 0
