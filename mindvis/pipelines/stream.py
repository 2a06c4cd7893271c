"""``mindvis-stream``: replay a continuous M/EEG recording as if live and decode every image window as it completes.

The recording is read in chunks of ``--chunk`` seconds. Image onsets come from the trigger channel (rising edges, as
they arrive) or from an events.tsv. When the last sample of an onset's window (``tmin``..``tmax`` of the decoder's
preparation) has arrived, the window is processed alone (:func:`mindvis.data.meeg.preprocess_window`, then the
preparation's robust scaler), decoded, and its decoded embedding ranked against the decoder's test images. Per window
the command prints and writes the top-5 images, the compute time and the latency from the window's last sample to its
result; at the end, the real-time factor (compute time / recording time; below 1 = faster than real time).

Train the decoder on ``mindvis-prep things-meg --filtering window`` so that it sees the same inputs offline and live.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from mindvis.data.fmri import DataError
from mindvis.data.meeg import preprocess_window, robust_scale, window_bounds
from mindvis.utils.cli import PlainHelpFormatter


class WindowStream:
    """Cuts image windows out of a recording fed in chunks. ``push(chunk)`` (channels + trigger, n) returns the
    (onset sample, raw window) pairs completed by that chunk; only the samples a pending window needs are kept."""

    def __init__(self, sfreq: float, tmin: float, tmax: float, trigger: int | None = None, onsets=None):
        if (trigger is None) == (onsets is None):
            raise ValueError("give either a trigger channel index or the onsets")
        self.sfreq, self.tmin, self.tmax, self.trigger = sfreq, tmin, tmax, trigger
        self.pending = sorted(int(o) for o in onsets) if onsets is not None else []
        self.buffer: np.ndarray | None = None
        self.start = 0  # sample index of the buffer's first column
        self.seen = 0  # samples received
        self.last = 0.0  # the trigger's last value (edges across chunks)

    def push(self, chunk: np.ndarray) -> list[tuple[int, np.ndarray]]:
        n = chunk.shape[1]
        if self.trigger is not None:
            trig = chunk[self.trigger]
            prev = np.concatenate([[self.last], trig[:-1]])
            self.pending += (self.seen + np.flatnonzero((trig > 0) & (prev <= 0))).tolist()
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
                    onsets=None) -> list[tuple[int, np.ndarray]]:
    """The same windows cut from the whole recording at once (the reference the stream must equal)."""
    if trigger is not None:
        trig = data[trigger]
        onsets = np.flatnonzero((trig > 0) & (np.concatenate([[0.0], trig[:-1]]) <= 0))
        data = np.delete(data, trigger, axis=0)
    out = []
    for onset in sorted(int(o) for o in onsets):
        a, b = window_bounds(onset, sfreq, tmin, tmax)
        if a >= 0 and b <= data.shape[1]:
            out.append((onset, data[:, a:b]))
    return out


def load_stream_model(run: str | Path):
    """(decoder, prepared folder's meta, test ids, test target embeddings) of a mindvis-align run on things-meg."""
    from omegaconf import OmegaConf

    from mindvis.align.decoders import load_decoder

    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise DataError(f"{run} is not a mindvis-align run (config.yaml is missing)")
    cfg = OmegaConf.load(run / "config.yaml")
    if cfg.data.dataset != "things-meg":
        raise DataError(f"{run} decodes {cfg.data.dataset}; mindvis-stream replays things-meg recordings")
    meta = json.loads((Path(cfg.data.path) / "meta.json").read_text())
    model = load_decoder(run / "best" if (run / "best").is_dir() else run / "model")
    with np.load(run / "test_embeddings.npz", allow_pickle=False) as z:
        ids, target = [str(i) for i in z["ids"]], z["target"]
    return model, meta, ids, target


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mindvis-stream", description=__doc__,
                                formatter_class=PlainHelpFormatter)
    p.add_argument("--model", required=True, metavar="RUN", help="a mindvis-align run on --dataset things-meg")
    p.add_argument("--input", required=True, metavar="RECORDING", help="a continuous recording MNE reads (.fif, .ds)")
    p.add_argument("--events", metavar="TSV", help="image onsets from this events.tsv (onset in s, trial_type exp/test) "
                                                  "instead of the trigger channel")
    p.add_argument("--chunk", type=float, default=0.1, help="seconds per chunk fed to the stream (default 0.1)")
    p.add_argument("--realtime", action="store_true", help="wait between chunks as a live acquisition would")
    p.add_argument("--out", metavar="DIR", help="write stream.jsonl (one line per window) and stream.json here")
    args = p.parse_args(argv)
    try:
        return _run(args)
    except (DataError, FileNotFoundError, ValueError) as e:
        print(f"mindvis-stream: error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    import mne
    import torch

    from mindvis.align.decoders import decode
    from mindvis.evaluation.retrieval import cosine_similarity

    model, meta, ids, target = load_stream_model(args.model)
    s = meta["settings"]
    if s.get("filtering") != "window":
        print("mindvis-stream: warning: the decoder was trained on whole-run filtering; live windows are processed "
              "alone (prepare with --filtering window to train on what the stream gives)", file=sys.stderr)
    raw = mne.io.read_raw(args.input, preload=True, verbose="error")
    sfreq = float(raw.info["sfreq"])
    if abs(sfreq - meta["raw_sfreq"]) > 1e-6:
        raise DataError(f"{args.input} is sampled at {sfreq:g} Hz; the decoder's recordings at {meta['raw_sfreq']:g} Hz")
    missing = [c for c in meta["ch_names"] if c not in raw.ch_names]
    if missing:
        raise DataError(f"{args.input} lacks the decoder's channels {missing[:5]}{'...' if len(missing) > 5 else ''}")
    truth = {}
    if args.events:
        with open(args.events, newline="") as f:
            rows = [r for r in csv.DictReader(f, delimiter="\t") if r.get("trial_type") in ("exp", "test")]
        if not rows:
            raise DataError(f"{args.events}: no image onsets (trial_type exp or test)")
        onsets = [int(round(float(r["onset"]) * sfreq)) for r in rows]
        truth = {o: r.get("image_path") for o, r in zip(onsets, rows)}
        picks, trigger = meta["ch_names"], None
    else:
        stim = [raw.ch_names[i] for i in mne.pick_types(raw.info, meg=False, stim=True)]
        if not stim:
            raise DataError(f"{args.input} has no trigger channel; give --events")
        picks, trigger, onsets = meta["ch_names"] + stim[:1], len(meta["ch_names"]), None
    data = raw.get_data(picks=picks)
    stream = WindowStream(sfreq, s["tmin"], s["tmax"], trigger, onsets)
    median, iqr = np.array(meta["robust_median"]), np.array(meta["robust_iqr"])
    step = max(1, int(round(args.chunk * sfreq)))
    gallery, known = torch.from_numpy(target), set(ids)
    log = []
    compute = 0.0
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "stream.jsonl").write_text("")
    t_start = time.perf_counter()
    for a in range(0, data.shape[1], step):
        if args.realtime:
            time.sleep(max(0.0, a / sfreq - (time.perf_counter() - t_start)))
        t0 = time.perf_counter()
        for onset, window in stream.push(data[:, a:a + step]):
            x = robust_scale(preprocess_window(window, sfreq, s["tmin"], s["h_freq"], s["sfreq"]), median, iqr, s["clamp"])
            pred = decode(model, x[None])["contrastive"]
            rank = cosine_similarity(torch.from_numpy(pred), gallery)[0].argsort(descending=True)[:5].tolist()
            done = time.perf_counter()
            end = window_bounds(onset, sfreq, s["tmin"], s["tmax"])[1]
            entry = {"onset_s": onset / sfreq, "top5": [ids[i] for i in rank], "compute_ms": 1000 * (done - t0),
                     # from the window's last sample reaching the stream to its result
                     "latency_ms": 1000 * ((done - t_start) - end / sfreq if args.realtime else done - t0)}
            if truth.get(onset) in known:  # a test image: the gallery holds it
                entry["image"] = truth[onset]
                entry["hit_top5"] = truth[onset] in entry["top5"]
            log.append(entry)
            print(f"{entry['onset_s']:8.3f} s  top-5 {', '.join(Path(i).stem for i in entry['top5'])}  "
                  f"{entry['compute_ms']:.1f} ms", flush=True)
            if out:
                with open(out / "stream.jsonl", "a") as f:
                    f.write(json.dumps(entry) + "\n")
        compute += time.perf_counter() - t0
    duration = data.shape[1] / sfreq
    summary = {"windows": len(log), "recording_s": duration, "compute_s": compute, "real_time_factor": compute / duration,
               "chunk_s": step / sfreq, "mean_compute_ms": float(np.mean([e["compute_ms"] for e in log])) if log else None,
               "max_compute_ms": float(np.max([e["compute_ms"] for e in log])) if log else None}
    hits = [e["hit_top5"] for e in log if "hit_top5" in e]
    if hits:
        summary |= {"top5_accuracy": float(np.mean(hits)), "chance_top5": min(1.0, 5 / len(ids)),
                    "scored_windows": len(hits)}
    print(f"{len(log)} windows from {duration:.1f} s of recording; compute {compute:.1f} s, real-time factor "
          f"{summary['real_time_factor']:.3f}" + (f"; top-5 {summary['top5_accuracy']:.3f} (chance "
                                                  f"{summary['chance_top5']:.3f})" if hits else ""))
    if out:
        (out / "stream.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
