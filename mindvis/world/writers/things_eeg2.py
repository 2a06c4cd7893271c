"""The THINGS-EEG2 part: preprocessed ``.npy`` dicts and image folders in the release's layout (see
:mod:`mindvis.world.meeg`)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mindvis.utils.io import atomic_dir

from ..meeg import EEG2_CHANNELS, background, eeg2_positions, evoked, meeg_sources, scale_to_snr
from .meta import write_meta


def write(world, root: str | os.PathLike) -> Path:
    """The THINGS-EEG2 layout (see :mod:`mindvis.world.meeg`): preprocessed .npy dicts and image folders."""
    from PIL import Image

    c = world.cfg
    times = np.round(np.arange(-0.2, 0.8 - 1e-9, 0.01), 2)  # 100 samples at 100 Hz, as the release

    def fill(tmp: Path):
        train_imgs, train_cls, test_imgs, test_cls = world.god_stimuli()
        for split, imgs, cls in (("training", train_imgs, train_cls), ("test", test_imgs, test_cls)):
            order = np.argsort(cls, kind="stable")  # the release orders images by concept folder
            for i in order:
                k = int(cls[i])
                folder = tmp / "image_set" / f"{split}_images" / f"{sorted(set(cls.tolist())).index(k) + 1:05d}_{world.concept(k)}"
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(imgs[i]).save(folder / f"{world.concept(k)}_{i:05d}.png")
        sensors = eeg2_positions()
        for s in range(c.meeg_subjects):
            rng = np.random.default_rng([c.seed, 11, s])
            sources, amps, n_train = meeg_sources(world, s, sensors, rng)
            ev = evoked(amps, sources, times)  # (images, 17, 100)
            noise_sd = scale_to_snr(float(ev[:, :, (times >= 0) & (times < 0.5)].var()), c.eeg_snr)
            folder = tmp / "preprocessed_data" / f"sub-{s + 1:02d}"
            folder.mkdir(parents=True)
            for split, idx, reps in (("training", np.argsort(train_cls, kind="stable"), c.eeg_train_repeats),
                                     ("test", n_train + np.argsort(test_cls, kind="stable"), c.meeg_test_repeats)):
                data = np.stack([[ev[i] + noise_sd * background(len(times), 100.0, sources.gain, rng)
                                  for _ in range(reps)] for i in idx]).astype(np.float32)
                np.save(folder / f"preprocessed_eeg_{split}.npy",
                        {"preprocessed_eeg_data": data, "ch_names": list(EEG2_CHANNELS), "times": times},
                        allow_pickle=True)
        write_meta(tmp, "things-eeg2", c)

    return atomic_dir(root, fill)
