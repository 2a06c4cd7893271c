"""``mindvis-prep``: public raw releases -> model-ready files (HCP for stage A; GOD, BOLD5000 and NSD for stage B;
THINGS-MEG for mindvis-align).

Every preparation streams with bounded memory, shows progress, skips finished parts (subjects, sessions or runs:
each is written under a temporary name and renamed), and writes ``meta.json`` (sources, ROI sizes, voxel counts,
statistics, versions). ``--out`` is a new or empty folder, or one the same preparation wrote (it continues there);
anything else there is refused.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tqdm.auto import tqdm

from mindvis.data.fmri import DataError
from mindvis.utils.cli import PlainHelpFormatter, check_output_folder

#: written into --out before a preparation starts: what it holds before meta.json does
MARKER = ".mindvis-prep"


def _prepared_kind(folder: Path) -> str | None:
    """Which preparation wrote ``folder``: meta.json's ``preparation``, else the marker of an unfinished one."""
    import json

    try:
        if (folder / "meta.json").is_file():
            return json.loads((folder / "meta.json").read_text()).get("preparation")
        if (folder / MARKER).is_file():
            return (folder / MARKER).read_text().strip()
    except (OSError, ValueError, AttributeError):
        return None
    return None


def check_out(kind: str, out: str) -> None:
    """``--out`` is new, empty or this preparation's own (then it continues); the marker is written before any work."""
    from mindvis.utils.io import atomic_write_text

    made = _prepared_kind(Path(out)) if Path(out).is_dir() else None
    if made not in (None, kind) and [p.name for p in Path(out).iterdir()] == [MARKER]:
        (Path(out) / MARKER).unlink()  # a preparation that stopped before writing anything: nothing to mix with
        made = None
    if made not in (None, kind):
        raise DataError(f"{out} holds a mindvis-prep {made} preparation; give {kind} another --out")
    folder = check_output_folder(out, reusable=lambda d: _prepared_kind(d) == kind, flag=None)
    if _prepared_kind(folder) is None:
        atomic_write_text(folder / MARKER, kind + "\n")


def _atlas_values(items: list[str] | None) -> dict[str, list[int]]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise DataError(f"--atlas-labels takes ROI=value[,value...], got {item!r}")
        roi, vals = item.split("=", 1)
        out[roi] = [int(v) for v in vals.split(",")]
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mindvis-prep", description=__doc__, formatter_class=PlainHelpFormatter)
    sub = p.add_subparsers(dest="dataset", required=True)
    h = sub.add_parser("hcp", help="HCP-1200 CIFTI-2 resting state -> <out>/<subject>/HCP_visual_voxel.npz")
    h.add_argument("--input", required=True, help="HCP-1200 root with one folder per subject")
    h.add_argument("--labels", help="HCP-MMP1.0 parcellation as a CIFTI-2 dlabel file on the same surfaces")
    h.add_argument("--pattern", default=None, help="glob of a subject's runs relative to its folder "
                   "(default: MNINonLinear/Results/rfMRI_REST*/rfMRI_REST*_Atlas_MSMAll.dtseries.nii)")
    h.add_argument("--runs", choices=["one", "all"], default="one",
                   help="runs per subject: one (default, as the original pipeline: REST1_LR if present, else the "
                        "first) or all (concatenated)")
    h.add_argument("--fix-clean", action="store_true",
                   help="read the ICA-FIX cleaned runs (*_Atlas_MSMAll_hp2000_clean.dtseries.nii) instead")
    h.add_argument("--include-7t", action="store_true",
                   help="also take 7T runs (TR 1.0 s; left out by default, the 3T release has TR 0.72 s)")
    h.add_argument("--subjects", nargs="*", help="only these subjects (default: every folder)")
    h.add_argument("--atlas", help="volumetric input: an integer atlas NIfTI on the runs' grid (with --atlas-labels)")
    h.add_argument("--atlas-labels", nargs="*", metavar="ROI=v[,v]", help="atlas values of V1..V4, e.g. V1=1,2")
    h.add_argument("--out", required=True, help="output folder (then: mindvis-pretrain --data hcp --data-path OUT)")
    g = sub.add_parser("god", help="GOD BData HDF5 + ImageNet images -> the MinD-Vis GOD layout")
    g.add_argument("--h5", nargs="+", required=True, help="per-subject HDF5 files (Subject1.h5 ...), in subject order")
    g.add_argument("--images", required=True, help="folder with the stimulus images (n01518878_5958.JPEG ...)")
    g.add_argument("--class-index", help="imagenet_class_index.json for ImageNet class labels")
    g.add_argument("--out", required=True, help="output folder (then: mindvis-finetune --dataset god --data-path OUT)")
    b = sub.add_parser("bold5000", help="BOLD5000 GLMsingle NIfTI betas + ROI masks -> ROI-betas layout")
    b.add_argument("--betas", nargs="+", required=True, metavar="SUB=GLOB",
                   help="per subject, a glob of its session beta files, e.g. CSI1='CSI1/*ses-*.nii.gz'")
    b.add_argument("--masks", nargs="+", required=True, metavar="SUB=DIR", help="per subject, its ROI mask folder")
    b.add_argument("--stimuli", required=True, help="the release's BOLD5000_Stimuli folder")
    b.add_argument("--out", required=True, help="output folder (then: mindvis-finetune --dataset bold5000 --data-path OUT)")
    n = sub.add_parser("nsd", help="NSD release (betas, nsdgeneral, design, stimuli) -> one subject's trials and images",
                       description="One NSD subject from the release layout: the ROI voxels of every trial's betas "
                                   "(z-scored per session, --zscore), the trial table (session, 73k image id, "
                                   "repetition, shared-1000) and the subject's images. Resumable per session; a "
                                   "session prepared with other settings is prepared again. Sessions missing from "
                                   "the download are named in a warning (--sessions makes them an error).")
    n.add_argument("--root", required=True, help="the NSD release root (nsddata/, nsddata_betas/, nsddata_stimuli/)")
    n.add_argument("--subject", required=True, help="subj01..subj08 (or 1..8)")
    n.add_argument("--sessions", help="sessions to prepare, e.g. 1-40 or 1,3,5-7 (default: all the subject did: "
                                      "40/40/32/30/40/32/40/30)")
    n.add_argument("--roi", default="nsdgeneral", help="ROI file under func1pt8mm/roi/ (default: nsdgeneral)")
    n.add_argument("--roi-threshold", type=float, default=0.0,
                   help="voxels whose ROI value is above this (default 0: nsdgeneral's 1s; -1 marks voxels that "
                        "are not cortical voxels, 0 cortical voxels outside the ROI; MindEye2 uses the same rule)")
    n.add_argument("--zscore", choices=["session-train", "session-all", "none"], default="session-train",
                   help="z-score each voxel within each session with statistics from the session's trials outside "
                        "the shared-1000 (session-train, default: the MindEye2 paper) or from all its trials "
                        "(session-all: MindEye2's released notebook), or keep percent signal change (none); "
                        "meta.json records which")
    n.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="dtype of betas.npy")
    n.add_argument("--image-size", type=int, default=256, help="stimulus side in pixels (default 256; 425 = as released)")
    n.add_argument("--out", required=True, help="output folder (then: mindvis-finetune --dataset nsd --data-path OUT)")
    m = sub.add_parser("things-meg", help="THINGS-MEG BIDS recordings -> one subject's epoched trials and images",
                       description="Reads the release (OpenNeuro ds004212) through mne-bids: magnetometers without the "
                                   "CTF references, bad channels (channels.tsv, --drop-channels) left out, image "
                                   "trials from events.tsv (catch trials dropped), image paths from "
                                   "sourcedata/sample_attributes_P<n>.csv, images from --images; epochs with "
                                   "MNE-Python around every image onset (defaults: Benchetrit et al. 2024). "
                                   "Resumable per run; a run prepared with other settings is prepared again.")
    m.add_argument("--root", required=True, help="the BIDS root (sub-BIGMEG<n>/ses-*/meg/*_task-main_run-*_meg.ds|.fif)")
    m.add_argument("--images", metavar="DIR", help="the THINGS images (<concept>/<file>.jpg; the release has none); "
                                                   "default: <root>/stimuli/<image_path>")
    m.add_argument("--trigger-channel", default="UPPT001", help="the image trigger channel (default UPPT001)")
    m.add_argument("--image-trigger", type=int, default=64,
                   help="its value at every trial onset (default 64); the triggers of that value must match the "
                        "events.tsv rows one for one; 0: no check")
    m.add_argument("--drop-channels", nargs="*", default=["MRO11-1609"], metavar="NAME",
                   help="sensors left out besides channels.tsv's bad ones (default MRO11-1609, broken in the release "
                        "per Hebart et al.'s preprocessing; --drop-channels alone keeps all)")
    m.add_argument("--subject", required=True, help="1..4, BIGMEG1 or sub-BIGMEG1")
    m.add_argument("--tmin", type=float, default=-0.5, help="epoch start, s from image onset (default -0.5)")
    m.add_argument("--tmax", type=float, default=1.0, help="epoch end, s (default 1.0)")
    m.add_argument("--l-freq", type=float, default=0.1, help="band-pass low edge, Hz (default 0.1)")
    m.add_argument("--h-freq", type=float, default=40.0, help="band-pass high edge, Hz (default 40)")
    m.add_argument("--sfreq", type=float, default=120.0, help="sampling rate after resampling, Hz (default 120)")
    m.add_argument("--clamp", type=float, default=20.0, help="clamp robust-scaled values to +-this (default 20)")
    m.add_argument("--image-size", type=int, default=256, help="stimulus side in pixels (default 256)")
    m.add_argument("--filtering", choices=["run", "window"], default="run",
                   help="run: band-pass whole runs, then epoch (Meta's offline pipeline; default); window: each epoch "
                        "alone as mindvis-stream does live (train the decoder you will stream with on this)")
    m.add_argument("--out", required=True, help="output folder (then: mindvis-align --dataset things-meg --data-path OUT)")
    for sp in sub.choices.values():
        sp.formatter_class = PlainHelpFormatter
    return p


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise DataError(f"{what} takes SUB=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="mindvis-prep: warning: %(message)s")
    try:
        check_out(args.dataset, args.out)
        if args.dataset == "hcp":
            from .hcp import DEFAULT_PATTERN, FIX_CLEAN_PATTERN, prepare_hcp

            pattern = args.pattern or (FIX_CLEAN_PATTERN if args.fix_clean else DEFAULT_PATTERN)
            out = prepare_hcp(args.input, args.out, args.labels, pattern, args.subjects, args.atlas,
                              _atlas_values(args.atlas_labels), progress=tqdm, runs=args.runs,
                              include_7t=args.include_7t)
        elif args.dataset == "god":
            from .god import prepare_god

            out = prepare_god(args.h5, args.images, args.out, args.class_index, progress=tqdm)
        elif args.dataset == "things-meg":
            from .things_meg import prepare_things_meg
            from .things_meg_settings import MEGSettings

            out = prepare_things_meg(args.root, args.subject, args.out, MEGSettings(
                tmin=args.tmin, tmax=args.tmax, l_freq=args.l_freq, h_freq=args.h_freq, sfreq=args.sfreq,
                clamp=args.clamp, image_size=args.image_size, filtering=args.filtering,
                trigger_channel=args.trigger_channel, image_trigger=args.image_trigger,
                drop_channels=list(args.drop_channels)), progress=tqdm, images=args.images)
        elif args.dataset == "nsd":
            from .nsd import prepare_nsd

            out = prepare_nsd(args.root, args.subject, args.out, args.sessions, args.roi, args.roi_threshold,
                              args.zscore, args.dtype, args.image_size, progress=tqdm)
        else:
            from .bold5000 import prepare_bold5000

            globs = _pairs(args.betas, "--betas")
            betas = {}
            for sub, pattern in globs.items():
                base = Path(pattern).anchor or "."
                files = sorted(Path(base).glob(str(Path(pattern).relative_to(base))))
                if not files:
                    raise DataError(f"--betas {sub}: no file matches {pattern}")
                betas[sub] = files
            out = prepare_bold5000(betas, _pairs(args.masks, "--masks"), args.stimuli, args.out, progress=tqdm)
    except (DataError, FileNotFoundError) as e:
        print(f"mindvis-prep: error: {e}", file=sys.stderr)
        return 2
    print(f"prepared {args.dataset} into {out} (see {Path(out) / 'meta.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
