"""``mindvis-stream``: replay a continuous M/EEG recording as if live and decode every image window as it completes.

The recording is read in chunks of ``--chunk`` seconds. Image onsets come from the trigger channel (``--trigger-channel``,
default the preparation's: UPPT001 for THINGS-MEG) where it steps to ``--image-trigger`` (the preparation's: 64, the
release's value at every trial onset; 0: any rising edge), as they arrive, or from an events.tsv (``--events``: its
exp / test rows). When the last sample of an onset's window (``tmin``..``tmax`` of the decoder's preparation) has
arrived, the window is processed alone (:func:`mindvis.data.meeg_signal.preprocess_window`, then the preparation's
robust scaler), decoded, and its decoded embedding ranked against the decoder's test images (the chosen subject's). Per
window the command prints and writes the top-5 images, the compute time and the latency from the window's last sample
to its result; at the end, the real-time factor (compute time / recording time; below 1 = faster than real time).

The image each window showed (for its score) comes from the release's ``sourcedata/sample_attributes_P<n>.csv``
(``--attributes``; found next to a BIDS recording by default), whose rows of the recording's session and run are the
trials in order (catch trials included, as the triggers), or from an ``image_path`` column of ``--events``; without
either, windows are decoded but not scored (said once).

Train the decoder on ``mindvis-prep things-meg --filtering window`` so that it sees the same inputs offline and live.
Ridge and MLP decoders read the window flattened; a brain module trained on several subjects decodes with the layer
of ``--subject`` (default: the recording's subject, sub-BIGMEG<n>).
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

from mindvis.data.events_tsv import read_events_tsv
from mindvis.data.fmri import DataError, error_summary
from mindvis.data.meeg_signal import preprocess_window, robust_scale, window_bounds
from mindvis.utils.cli import PlainHelpFormatter

IMAGE_TRIALS = ("exp", "test")


def trigger_onsets(trig: np.ndarray, previous: float, code: int | None) -> np.ndarray:
    """Indices where the trigger steps to ``code`` (None or 0: any rising edge from <= 0 to > 0); ``previous`` is the
    value before the first sample."""
    prev = np.concatenate([[previous], trig[:-1]])
    if code:
        return np.flatnonzero((trig == code) & (prev != code))
    return np.flatnonzero((trig > 0) & (prev <= 0))


class WindowStream:
    """Cuts image windows out of a recording fed in chunks. ``push(chunk)`` (channels + trigger, n) returns the
    (onset sample, raw window) pairs completed by that chunk; only the samples a pending window needs are kept."""

    def __init__(self, sfreq: float, tmin: float, tmax: float, trigger: int | None = None, onsets=None,
                 code: int | None = None):
        if (trigger is None) == (onsets is None):
            raise ValueError("give either a trigger channel index or the onsets")
        self.sfreq, self.tmin, self.tmax, self.trigger, self.code = sfreq, tmin, tmax, trigger, code
        self.pending = sorted(int(o) for o in onsets) if onsets is not None else []
        self.ordinal = {o: k for k, o in enumerate(self.pending)}  # onset -> its number among the onsets (the trial)
        self.buffer: np.ndarray | None = None
        self.start = 0  # sample index of the buffer's first column
        self.seen = 0  # samples received
        self.last = 0.0  # the trigger's last value (edges across chunks)

    def push(self, chunk: np.ndarray) -> list[tuple[int, np.ndarray]]:
        n = chunk.shape[1]
        if self.trigger is not None:
            trig = chunk[self.trigger]
            found = (self.seen + trigger_onsets(trig, self.last, self.code)).tolist()
            self.ordinal.update({o: len(self.ordinal) + k for k, o in enumerate(found)})
            self.pending += found
            self.last = float(trig[-1])
            data = np.delete(chunk, self.trigger, axis=0)
        else:
            data = chunk
        self.buffer = data if self.buffer is None else np.concatenate([self.buffer, data], 1)
        self.seen += n
        out, keep = [], []
        for onset in self.pending:
            a, b = window_bounds(onset, self.sfreq, self.tmin, self.tmax)
            if b <= self.seen:
                if a >= self.start:
                    out.append((onset, self.buffer[:, a - self.start:b - self.start]))
            else:
                keep.append(onset)
        self.pending = keep
        first = min([window_bounds(o, self.sfreq, self.tmin, self.tmax)[0] for o in keep] +
                    [self.seen + int(round(self.tmin * self.sfreq))])
        drop = max(0, first - self.start)
        if drop:
            self.buffer, self.start = self.buffer[:, drop:], self.start + drop
        return out


def offline_windows(data: np.ndarray, sfreq: float, tmin: float, tmax: float, trigger: int | None = None,
                    onsets=None, code: int | None = None) -> list[tuple[int, np.ndarray]]:
    """The same windows cut from the whole recording at once (the reference the stream must equal)."""
    if trigger is not None:
        onsets = trigger_onsets(data[trigger], 0.0, code)
        data = np.delete(data, trigger, axis=0)
    out = []
    for onset in sorted(int(o) for o in onsets):
        a, b = window_bounds(onset, sfreq, tmin, tmax)
        if a >= 0 and b <= data.shape[1]:
            out.append((onset, data[:, a:b]))
    return out


def load_stream_model(run: str | Path):
    """(decoder, prepared folder's meta, test ids, test target embeddings, test subjects) of a mindvis-align run on
    things-meg."""
    from omegaconf import OmegaConf

    from mindvis.align.decoders import load_decoder
    from mindvis.data.things_meg import things_meg_folders

    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise DataError(f"{run} is not a mindvis-align run (config.yaml is missing)")
    cfg = OmegaConf.load(run / "config.yaml")
    if cfg.data.dataset != "things-meg":
        raise DataError(f"{run} decodes {cfg.data.dataset}; mindvis-stream replays things-meg recordings")
    metas = [m for _, m in things_meg_folders(cfg.data.path, list(cfg.data.get("subjects") or []))]
    model = load_decoder(run / "best" if (run / "best").is_dir() else run / "model")
    with np.load(run / "test_embeddings.npz", allow_pickle=False) as z:
        ids, target = [str(i) for i in z["ids"]], z["target"]
        subjects = [str(s) for s in z["subjects"]] if "subjects" in z.files else [""] * len(ids)
    return model, metas, ids, target, subjects


def _chunk(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--chunk takes seconds, got {text!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"--chunk must be > 0 s (at least one sample), got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mindvis-stream", description=__doc__,
                                formatter_class=PlainHelpFormatter)
    p.add_argument("--model", required=True, metavar="RUN", help="a mindvis-align run on --dataset things-meg")
    p.add_argument("--input", required=True, metavar="RECORDING", help="a continuous recording MNE reads (.fif, .ds)")
    p.add_argument("--events", metavar="TSV", help="image onsets from this events.tsv (onset in s, trial_type exp/test) "
                                                  "instead of the trigger channel")
    p.add_argument("--attributes", metavar="CSV", help="sample_attributes_P<n>.csv: the image of every trial (default: "
                                                       "<BIDS root>/sourcedata/ next to the recording, if there)")
    p.add_argument("--trigger-channel", metavar="NAME", help="the image trigger channel (default: the preparation's, "
                                                              "UPPT001)")
    p.add_argument("--image-trigger", type=int, metavar="CODE", help="its value at an image onset (default: the "
                                                                     "preparation's, 64; 0: any rising edge)")
    p.add_argument("--subject", help="the subject layer of a brain module trained on several subjects (default: the "
                                     "recording's subject)")
    p.add_argument("--chunk", type=_chunk, default=0.1, metavar="S",
                   help="seconds per chunk fed to the stream: > 0, at least one sample (default 0.1)")
    p.add_argument("--realtime", action="store_true", help="wait between chunks as a live acquisition would")
    p.add_argument("--out", metavar="DIR", help="write stream.jsonl (one line per window) and stream.json here")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (DataError, FileNotFoundError, ValueError, KeyError) as e:
        print(f"mindvis-stream: error: {e}", file=sys.stderr)
        return 2


def read_recording(path: str | Path):
    """The whole recording, or a one-line DataError naming the file."""
    import mne

    path = Path(path)
    if not path.exists():
        raise DataError(f"--input {path} does not exist")
    try:
        return mne.io.read_raw(path, preload=True, verbose="error")
    except Exception as e:  # noqa: BLE001 - MNE raises many error types (even AssertionError) for foreign files
        raise DataError(f"--input {path}: not a recording MNE-Python reads ({error_summary(e)})") from None


def bids_entities(path: str | Path) -> dict:
    """sub / ses / run of a BIDS file name ({} where absent)."""
    return {k: m.group(1) for k in ("sub", "ses", "run") if (m := re.search(rf"{k}-([A-Za-z0-9]+)", Path(path).name))}


def trial_images(args, n_rows: int | None = None) -> tuple[list[str | None] | None, str]:
    """The image of every trial of the recording, in order (catch trials included), from the sample attributes;
    (None, why) when there are none."""
    ent = bids_entities(args.input)
    path = Path(args.attributes) if args.attributes else None
    if path is None and "sub" in ent:
        m = re.fullmatch(r"BIGMEG(\d+)", ent["sub"])
        root = Path(args.input).resolve().parents[3] if len(Path(args.input).resolve().parents) > 3 else None
        guess = root / "sourcedata" / f"sample_attributes_P{m.group(1)}.csv" if m and root else None
        path = guess if guess is not None and guess.is_file() else None
    if path is None:
        return None, "no sample attributes (--attributes, or sourcedata/sample_attributes_P<n>.csv of the BIDS root)"
    if not path.is_file():
        raise DataError(f"--attributes {path} does not exist")
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"--attributes {path}: not a CSV file ({error_summary(e)})") from None
    if not rows or not {"session_nr", "run_nr", "image_path", "trial_type"} <= set(rows[0]):
        raise DataError(f"--attributes {path}: columns {sorted(rows[0]) if rows else []}; expected session_nr, run_nr, "
                        "trial_type and image_path (the release's sample_attributes_P<n>.csv)")
    ses, run = int(ent.get("ses", 1)), int(ent.get("run", 1))
    mine = [r for r in rows if r["session_nr"].strip() and r["run_nr"].strip()
            and int(float(r["session_nr"])) == ses and int(float(r["run_nr"])) == run]
    if not mine:
        return None, f"{path} has no rows for session {ses}, run {run}"
    if n_rows is not None and len(mine) != n_rows:
        raise DataError(f"--attributes {path} has {len(mine)} rows for session {ses}, run {run}, but --events "
                        f"{n_rows}: they do not describe the same trials")
    return [r["image_path"] if r["trial_type"] in IMAGE_TRIALS else None for r in mine], ""


def choose_subject(args, names: list[str]) -> str | None:
    """The subject to decode as, among ``names`` (a brain module's subject layers, or the run's test subjects):
    ``--subject``, else the recording's subject (sub-BIGMEG<n>), else the only one; None when there are none."""
    names = [n for n in dict.fromkeys(names) if n]
    if not names:
        return None
    if args.subject:
        for key in (args.subject, f"sub-{args.subject}", f"sub-BIGMEG{args.subject}"):
            if key in names:
                return key
        raise DataError(f"--subject {args.subject}: the decoder knows the subjects {names}")
    ent = bids_entities(args.input)
    if "sub" in ent and f"sub-{ent['sub']}" in names:
        return f"sub-{ent['sub']}"
    if len(names) == 1:
        return names[0]
    raise DataError(f"the decoder knows the subjects {names}: give --subject")


def _run(args) -> int:
    import mne
    import torch

    from mindvis.align.decoders import decode
    from mindvis.evaluation.retrieval import cosine_similarity

    model, metas, ids, target, test_subjects = load_stream_model(args.model)
    raw = read_recording(args.input)
    rows = read_events_tsv(args.events, f"--events {args.events}") if args.events else None
    layers = list(getattr(model, "subject_index", {}))  # a brain module's subject layers
    subject = choose_subject(args, layers or test_subjects)
    meta = next((m for m in metas if m["settings"].get("subject") == subject), metas[0])
    s = meta["settings"]
    if s.get("filtering") != "window":
        print("mindvis-stream: warning: the decoder was trained on whole-run filtering; live windows are processed "
              "alone (prepare with --filtering window to train on what the stream gives)", file=sys.stderr)
    mine = [i for i, t in enumerate(test_subjects) if subject is None or t in ("", subject)] or list(range(len(ids)))
    ids, target = [ids[i] for i in mine], target[mine]
    sfreq = float(raw.info["sfreq"])
    if abs(sfreq - meta["raw_sfreq"]) > 1e-6:
        raise DataError(f"{args.input} is sampled at {sfreq:g} Hz; the decoder's recordings at {meta['raw_sfreq']:g} Hz")
    missing = [c for c in meta["ch_names"] if c not in raw.ch_names]
    if missing:
        raise DataError(f"{args.input} lacks the decoder's channels {missing[:5]}{'...' if len(missing) > 5 else ''}")
    step = int(round(args.chunk * sfreq))
    if step < 1:
        raise DataError(f"--chunk {args.chunk} s is shorter than one sample at {sfreq:g} Hz")
    code = args.image_trigger if args.image_trigger is not None else s.get("image_trigger", 0)
    truth: dict[int, str | None] = {}
    if rows is not None:
        images, why = trial_images(args, len(rows))
        if images is None and "image_path" in rows[0]:
            images, why = [r["image_path"] if r["trial_type"] in IMAGE_TRIALS else None for r in rows], ""
        keep = [i for i, r in enumerate(rows) if r["trial_type"] in IMAGE_TRIALS]
        if not keep:
            raise DataError(f"{args.events}: no image onsets (trial_type exp or test)")
        onsets = [int(round(rows[i]["onset"] * sfreq)) for i in keep]
        truth = {o: images[i] for o, i in zip(onsets, keep)} if images else {}
        picks, trigger = meta["ch_names"], None
    else:
        name = args.trigger_channel or s.get("trigger_channel")
        if not name:
            stim = [raw.ch_names[i] for i in mne.pick_types(raw.info, meg=False, stim=True)]
            name = stim[0] if stim else None
        if name is None or name not in raw.ch_names:
            raise DataError(f"{args.input} has no trigger channel {name or ''}: give --trigger-channel or --events")
        images, why = trial_images(args)
        picks, trigger, onsets = meta["ch_names"] + [name], len(meta["ch_names"]), None
    if images is None:
        print(f"mindvis-stream: warning: the windows' images are unknown ({why}; nor an image_path column in "
              "--events): windows are decoded but not scored", file=sys.stderr)
    data = raw.get_data(picks=picks)
    stream = WindowStream(sfreq, s["tmin"], s["tmax"], trigger, onsets, code or None)
    median, iqr = np.array(meta["robust_median"]), np.array(meta["robust_iqr"])
    gallery, known = torch.from_numpy(target), set(ids)
    flat = not layers  # ridge / MLP read the window flattened
    log = []
    compute = 0.0
    out = Path(args.out) if args.out else None
    if out:
        if out.exists() and not out.is_dir():
            raise DataError(f"--out {out} is a file, not a folder")
        out.mkdir(parents=True, exist_ok=True)
        (out / "stream.jsonl").write_text("")
    t_start = time.perf_counter()
    for a in range(0, data.shape[1], step):
        if args.realtime:
            time.sleep(max(0.0, a / sfreq - (time.perf_counter() - t_start)))
        t0 = time.perf_counter()
        for onset, window in stream.push(data[:, a:a + step]):
            x = robust_scale(preprocess_window(window, sfreq, s["tmin"], s["h_freq"], s["sfreq"]), median, iqr, s["clamp"])
            x = x.reshape(1, -1) if flat else x[None]
            pred = decode(model, x, subjects=[subject] if layers else None)["contrastive"]
            rank = cosine_similarity(torch.from_numpy(pred), gallery)[0].argsort(descending=True)[:5].tolist()
            done = time.perf_counter()
            end = window_bounds(onset, sfreq, s["tmin"], s["tmax"])[1]
            entry = {"onset_s": onset / sfreq, "top5": [ids[i] for i in rank], "compute_ms": 1000 * (done - t0),
                     # from the window's last sample reaching the stream to its result
                     "latency_ms": 1000 * ((done - t_start) - end / sfreq if args.realtime else done - t0)}
            k = stream.ordinal[onset]  # with triggers: the k-th trigger is the k-th trial (catch trials included)
            seen = truth.get(onset) if args.events else (images[k] if images and k < len(images) else None)
            if seen in known:  # a test image: the gallery holds it
                entry["image"] = seen
                entry["hit_top5"] = seen in entry["top5"]
            log.append(entry)
            print(f"{entry['onset_s']:8.3f} s  top-5 {', '.join(Path(i).stem for i in entry['top5'])}  "
                  f"{entry['compute_ms']:.1f} ms", flush=True)
            if out:
                with open(out / "stream.jsonl", "a") as f:
                    f.write(json.dumps(entry) + "\n")
        compute += time.perf_counter() - t0
    duration = data.shape[1] / sfreq
    summary = {"windows": len(log), "recording_s": duration, "compute_s": compute, "real_time_factor": compute / duration,
               "chunk_s": step / sfreq, "subject": subject,
               "mean_compute_ms": float(np.mean([e["compute_ms"] for e in log])) if log else None,
               "max_compute_ms": float(np.max([e["compute_ms"] for e in log])) if log else None}
    hits = [e["hit_top5"] for e in log if "hit_top5" in e]
    if hits:
        summary |= {"top5_accuracy": float(np.mean(hits)), "chance_top5": min(1.0, 5 / len(ids)),
                    "scored_windows": len(hits)}
    print(f"{len(log)} windows from {duration:.1f} s of recording; compute {compute:.1f} s, real-time factor "
          f"{summary['real_time_factor']:.3f}" + (f"; top-5 {summary['top5_accuracy']:.3f} (chance "
                                                  f"{summary['chance_top5']:.3f})" if hits else "; no window scored"))
    if out:
        (out / "stream.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
