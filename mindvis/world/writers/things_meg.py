"""The THINGS-MEG part: continuous FIF runs with events in the release's BIDS layout (see :mod:`mindvis.world.meeg`)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mindvis.utils.io import atomic_dir

from ..meeg import (MEG_TRIGGER, SOA_JITTER_S, SOA_S, background, evoked, helmet_positions, meeg_sources,
                    scale_to_snr, write_json)
from .meta import write_meta


def write(world, root: str | os.PathLike) -> Path:
    """The THINGS-MEG BIDS layout (see :mod:`mindvis.world.meeg`): continuous FIF runs with events."""
    import mne
    from PIL import Image

    c = world.cfg

    def fill(tmp: Path):
        write_json(tmp / "dataset_description.json", {"Name": "synthetic THINGS-MEG", "BIDSVersion": "1.8.0"})
        (tmp / "participants.tsv").write_text("participant_id\n" + "".join(
            f"sub-BIGMEG{s + 1}\n" for s in range(c.meeg_subjects)))
        train_imgs, train_cls, test_imgs, test_cls = world.god_stimuli()
        paths = []
        for i, (img, k) in enumerate(zip(np.concatenate([train_imgs, test_imgs]), np.concatenate([train_cls, test_cls]))):
            rel = f"stimuli/{world.concept(k)}/{world.concept(k)}_{i:05d}.png"
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(tmp / rel)
            paths.append(rel)
        sensors = helmet_positions(c.meg_sensors)
        names = [f"MEG{i + 1:03d}" for i in range(c.meg_sensors)]
        for s in range(c.meeg_subjects):
            rng = np.random.default_rng([c.seed, 10, s])
            sources, amps, n_train = meeg_sources(world, s, sensors, rng)
            trials = list(range(n_train)) + [i for i in range(n_train, len(amps)) for _ in range(c.meeg_test_repeats)]
            trials = rng.permutation(trials)
            times = np.arange(0, 1.0, 1 / c.meg_sfreq)
            early = times < 0.5
            ev_all = evoked(amps, sources, times)  # (images, C, T)
            noise_sd = scale_to_snr(float(ev_all[:, :, early].var()), c.meg_snr)
            for run, chunk in enumerate(np.array_split(trials, c.meg_runs)):
                soa = SOA_S + rng.uniform(-SOA_JITTER_S, SOA_JITTER_S, len(chunk))
                onsets = 2.0 + np.concatenate([[0], np.cumsum(soa[:-1])])
                n_samples = int((onsets[-1] + 3.0) * c.meg_sfreq)
                data = noise_sd * background(n_samples, c.meg_sfreq, sources.gain, rng)
                stim = np.zeros((1, n_samples))
                starts = np.round(onsets * c.meg_sfreq).astype(int)
                for t, start in zip(chunk, starts):
                    data[:, start:start + len(times)] += ev_all[t]
                    stim[0, start] = 1 if t < n_train else 2
                info = mne.create_info(names + [MEG_TRIGGER], c.meg_sfreq, ["mag"] * len(names) + ["stim"])
                for ch, p in zip(info["chs"], sensors):
                    ch["loc"][:3] = p
                raw = mne.io.RawArray(np.concatenate([data * 1e-13, stim]), info, verbose="error")
                meg = tmp / f"sub-BIGMEG{s + 1}" / "ses-01" / "meg"
                meg.mkdir(parents=True, exist_ok=True)
                stem = f"sub-BIGMEG{s + 1}_ses-01_task-main_run-{run + 1:02d}"
                raw.save(meg / f"{stem}_meg.fif", fmt="single", verbose="error")
                rows = ["onset\tduration\ttrial_type\tvalue\tsample\timage_nr\tcategory_nr\timage_path"]
                for t, start in zip(chunk, starts):
                    kind = "exp" if t < n_train else "test"
                    k = int(train_cls[t] if t < n_train else test_cls[t - n_train])
                    rows.append(f"{start / c.meg_sfreq:.6f}\t0.5\t{kind}\t{1 if kind == 'exp' else 2}\t{start}\t"
                                f"{t + 1}\t{k + 1}\t{paths[t]}")
                (meg / f"{stem}_events.tsv").write_text("\n".join(rows) + "\n")
                (meg / f"{stem}_channels.tsv").write_text("name\ttype\tunits\n" + "".join(
                    f"{n}\tMEGMAG\tT\n" for n in names) + f"{MEG_TRIGGER}\tTRIG\tn/a\n")
        write_meta(tmp, "things-meg", c)

    return atomic_dir(root, fill)
