"""The THINGS-MEG part: continuous recordings in the release's BIDS layout (OpenNeuro ds004212; see
:mod:`mindvis.world.meeg`).

What the release has and the synthetic copy reproduces (the facts are from the release's sidecars in the OpenNeuro git
mirror, ViCCo-Group/THINGS-data ``MEG/step1_preprocessing.py`` and Meta's reader of the release,
facebookresearch/neuroai ``neuralfetch/studies/hebart2023things.py``):

* ``sub-BIGMEG<n>/ses-01/meg/sub-BIGMEG<n>_ses-01_task-main_run-<rr>_meg.fif`` (the release: CTF ``.ds``): CTF axial
  gradiometers named as in the CTF-275 layout with the system's suffix (``MLC11-1609``), CTF reference sensors with a
  compensation matrix (the data are stored uncompensated, grade 0), and the trigger channel ``UPPT001``: value 64 at
  every trial's onset (catch trials included) and a final 32 after the last trial.
* ``*_channels.tsv`` with the release's columns and types: the sensors ``OTHER``, the references ``MEGREFMAG`` /
  ``MEGREFGRADAXIAL``, ``UPPT001`` ``MISC``; one sensor's status is ``bad`` (the release marks none; the broken
  ``MRO11-1609`` is only in Hebart's script, here it is flat).
* ``*_events.tsv`` with the release's columns ``onset, duration, trial_type, things_category_nr, value, sample``
  (trial_type exp / test / catch, value = the image number, catch rows ``N/A``); no image paths.
* ``sourcedata/sample_attributes_P<n>.csv``: one row per trial of every run in order, with ``trial_type, session_nr,
  run_nr, things_category_nr, image_nr, things_image_nr, image_path``; training images under
  ``images_meg/<concept>/<concept>_<k>.png``, the test images in one flat folder ``images_test_meg/``, catch images
  under ``images_catch_meg/``. (The release's file has further columns, not reproduced.)
* The images: the release has none (they are THINGS images, distributed apart); the synthetic copy puts them under
  ``stimuli/`` (BIDS' stimulus folder) at their ``image_path``, catch images left out.

Trials: every training image once (THINGS: 12 images of each of 1,854 concepts), images of the test concepts that are
not the test images once (``images_per_class`` per test concept: the images Benchetrit et al.'s large retrieval set
holds out), the test images ``meeg_test_repeats`` times, and a catch trial for about every tenth image, in a random
order over ``meg_runs`` runs; stimulus-onset asynchrony 1.5 +- 0.2 s as THINGS-MEG.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mindvis.utils.io import atomic_dir

from ..meeg import (MEG_BROKEN, MEG_REFERENCES, MEG_TRIGGER, SOA_JITTER_S, SOA_S, background, ctf_sensors, evoked,
                    meeg_sources, scale_to_snr, write_json)
from .meta import write_meta

IMAGE_TRIGGER, END_TRIGGER = 64, 32  # UPPT001 values: every trial onset, and once after the last trial
HELD_OUT_STREAM = 10  # the world's render stream of the test concepts' other images
CHANNEL_COLUMNS = "name\ttype\tunits\tlow_cutoff\thigh_cutoff\tdescription\tsampling_frequency\tstatus\n"
EVENT_COLUMNS = "onset\tduration\ttrial_type\tthings_category_nr\tvalue\tsample"
ATTRIBUTE_COLUMNS = "trial_type,session_nr,run_nr,things_category_nr,image_nr,things_image_nr,image_path"


def _ctf_info(names, positions, refs, sfreq, rng):
    """MNE info of CTF axial gradiometers, CTF references with a grade-3 compensation matrix, and UPPT001."""
    import mne
    from mne.io.constants import FIFF

    ref_names = [r for r, _ in refs]
    info = mne.create_info(names + ref_names + [MEG_TRIGGER], sfreq,
                           ["mag"] * len(names) + ["ref_meg"] * len(refs) + ["stim"])
    kinds = dict(refs)
    for ch in info["chs"]:
        if ch["kind"] == FIFF.FIFFV_MEG_CH:
            ch["coil_type"] = FIFF.FIFFV_COIL_CTF_GRAD
        elif ch["kind"] == FIFF.FIFFV_REF_MEG_CH:
            ch["coil_type"] = (FIFF.FIFFV_COIL_CTF_REF_MAG if kinds[ch["ch_name"]] == "mag" else
                               FIFF.FIFFV_COIL_CTF_REF_GRAD)
    for ch, p in zip(info["chs"], positions):
        ch["loc"][:3] = p
    comp = {"ctfkind": int("47334252", 16), "kind": 3, "save_calibrated": True,  # G3BR, third-order gradient
            "rowcals": np.ones(len(names)), "colcals": np.ones(len(refs)),
            "data": {"nrow": len(names), "ncol": len(refs), "row_names": list(names), "col_names": ref_names,
                     "data": np.round(0.01 * rng.normal(size=(len(names), len(refs))), 6)}}
    with info._unlock():
        info["comps"] = [comp]
    return info


def write(world, root: str | os.PathLike) -> Path:
    """The THINGS-MEG BIDS layout (see the module docstring)."""
    import mne
    from PIL import Image

    c = world.cfg

    def fill(tmp: Path):
        write_json(tmp / "dataset_description.json", {"Name": "synthetic THINGS-MEG", "BIDSVersion": "1.8.0"})
        (tmp / "participants.tsv").write_text("participant_id\n" + "".join(
            f"sub-BIGMEG{s + 1}\n" for s in range(c.meeg_subjects)))
        write_json(tmp / "task-main_events.json", {
            "onset": {"Description": "image onset (s from the recording's first sample)"},
            "trial_type": {"Levels": {"exp": "image shown once", "test": "test image, shown in every session",
                                      "catch": "oddball image (task)"}},
            "things_category_nr": {"Description": "concept number"},
            "value": {"Description": "image number"}, "sample": {"Description": "onset in samples"}})
        train_imgs, train_cls, test_imgs, test_cls = world.god_stimuli()
        held_cls = np.repeat(test_cls, c.images_per_class)
        held_imgs = world.render(held_cls, HELD_OUT_STREAM)
        kinds = ["exp"] * len(train_cls) + ["test"] * len(test_cls) + ["exp"] * len(held_cls)
        classes = np.concatenate([train_cls, test_cls, held_cls])
        paths = []
        for i, (img, k, kind) in enumerate(zip(np.concatenate([train_imgs, test_imgs, held_imgs]), classes, kinds)):
            name = f"{world.concept(k)}_{i:05d}.png"
            rel = f"images_test_meg/{name}" if kind == "test" else f"images_meg/{world.concept(k)}/{name}"
            (tmp / "stimuli" / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(tmp / "stimuli" / rel)
            paths.append(rel)
        names, sensors = ctf_sensors(c.meg_sensors)
        bad = next(n for n in names if n != MEG_BROKEN)  # marked bad in channels.tsv
        (tmp / "sourcedata").mkdir()
        for s in range(c.meeg_subjects):
            rng = np.random.default_rng([c.seed, 10, s])
            sources, amps, n_train = meeg_sources(world, s, sensors, rng, extra=(held_imgs, held_cls))
            n_test = len(test_cls)
            images = [i for i in range(len(classes)) if kinds[i] == "exp"]
            images += [i for i in range(n_train, n_train + n_test) for _ in range(c.meeg_test_repeats)]
            images = rng.permutation(images)
            times = np.arange(0, 1.0, 1 / c.meg_sfreq)
            early = times < 0.5
            ev_all = evoked(amps, sources, times)  # (images, C, T)
            catch_ev = evoked(np.zeros((1, amps.shape[1])), sources, times)[0]  # the onset response only
            noise_sd = scale_to_snr(float(ev_all[:, :, early].var()), c.meg_snr)
            attributes, n_catch = [ATTRIBUTE_COLUMNS], 0
            for run, chunk in enumerate(np.array_split(images, c.meg_runs)):
                trials = [int(t) for t in chunk]
                for _ in range(max(1, len(chunk) // 10)):  # catch trials (THINGS-MEG: 20 in a run of 226)
                    trials.insert(int(rng.integers(0, len(trials) + 1)), -1)
                soa = SOA_S + rng.uniform(-SOA_JITTER_S, SOA_JITTER_S, len(trials))
                onsets = 2.0 + np.concatenate([[0], np.cumsum(soa[:-1])])
                n_samples = int((onsets[-1] + 3.0) * c.meg_sfreq)
                data = noise_sd * background(n_samples, c.meg_sfreq, sources.gain, rng)
                data[names.index(bad)] *= 20  # a noisy sensor
                data[names.index(MEG_BROKEN)] = 0  # a broken (flat) sensor
                refs = noise_sd * rng.normal(size=(len(MEG_REFERENCES), n_samples))
                stim = np.zeros((1, n_samples))
                starts = np.round(onsets * c.meg_sfreq).astype(int)
                width = max(1, int(round(0.01 * c.meg_sfreq)))
                for t, start in zip(trials, starts):
                    data[:, start:start + len(times)] += catch_ev if t < 0 else ev_all[t]
                    stim[0, start:start + width] = IMAGE_TRIGGER
                end = int(starts[-1] + 1.0 * c.meg_sfreq)
                stim[0, end:end + width] = END_TRIGGER
                info = _ctf_info(names, sensors, MEG_REFERENCES, c.meg_sfreq, rng)
                raw = mne.io.RawArray(np.concatenate([data * 1e-13, refs * 1e-13, stim]), info, verbose="error")
                meg = tmp / f"sub-BIGMEG{s + 1}" / "ses-01" / "meg"
                meg.mkdir(parents=True, exist_ok=True)
                stem = f"sub-BIGMEG{s + 1}_ses-01_task-main_run-{run + 1:02d}"
                raw.save(meg / f"{stem}_meg.fif", fmt="single", verbose="error")
                rows = [EVENT_COLUMNS]
                for t, start in zip(trials, starts):
                    if t < 0:
                        n_catch += 1
                        rows.append(f"{start / c.meg_sfreq:.6f}\t0.5\tcatch\tN/A\tN/A\t{start}")
                        attributes.append(f"catch,1,{run + 1},N/A,N/A,N/A,images_catch_meg/catch_{n_catch:04d}.png")
                        continue
                    kind, k = kinds[t], int(classes[t]) + 1
                    rows.append(f"{start / c.meg_sfreq:.6f}\t0.5\t{kind}\t{k}\t{t + 1}\t{start}")
                    attributes.append(f"{kind},1,{run + 1},{k},{t + 1},{t + 1},{paths[t]}")
                (meg / f"{stem}_events.tsv").write_text("\n".join(rows) + "\n")
                (meg / f"{stem}_channels.tsv").write_text(CHANNEL_COLUMNS + "".join(
                    f"{n}\tOTHER\tT\t0\t{c.meg_sfreq / 2:g}\tother\t{c.meg_sfreq:g}\t{'bad' if n == bad else 'good'}\n"
                    for n in names) + "".join(
                    f"{r}\t{'MEGREFMAG' if kind == 'mag' else 'MEGREFGRADAXIAL'}\tT\t0\t{c.meg_sfreq / 2:g}\t"
                    f"reference\t{c.meg_sfreq:g}\tgood\n" for r, kind in MEG_REFERENCES) +
                    f"{MEG_TRIGGER}\tMISC\tV\t0\t{c.meg_sfreq / 2:g}\ttrigger\t{c.meg_sfreq:g}\tgood\n")
                write_json(meg / f"{stem}_meg.json", {
                    "TaskName": "main", "Manufacturer": "CTF", "SamplingFrequency": c.meg_sfreq,
                    "PowerLineFrequency": 60, "MEGChannelCount": len(names),
                    "MEGREFChannelCount": len(MEG_REFERENCES), "MiscChannelCount": 1, "TriggerChannelCount": 0,
                    "DewarPosition": "upright", "SoftwareFilters": "n/a", "DigitizedLandmarks": False,
                    "DigitizedHeadPoints": False})
            (tmp / "sourcedata" / f"sample_attributes_P{s + 1}.csv").write_text("\n".join(attributes) + "\n")
        write_meta(tmp, "things-meg", c)

    return atomic_dir(root, fill)
