"""Shared M/EEG fixtures (session-scoped, imported by the M/EEG test modules): a two-subject synthetic THINGS-MEG and
THINGS-EEG2 release, both subjects' preparations in one folder, and a brain-module run and a ridge run on them."""
import pytest

from mindvis.data_prep.things_meg import prepare_things_meg
from mindvis.data_prep.things_meg_settings import MEGSettings
from mindvis.world import SyntheticWorld, SyntheticWorldConfig

from .conftest import TINY_WORLD

MEEG_WORLD = {**TINY_WORLD, "meg_sensors": 12, "meg_sfreq": 200.0, "meg_runs": 2, "meeg_test_repeats": 3,
              "eeg_train_repeats": 2, "meeg_sources_per_area": 2, "meeg_subjects": 2}
#: a brain module small enough for seconds of training
TINY_BRAIN_MODULE = ["decoder.brain_module.hidden=8", "decoder.brain_module.merger_channels=8",
                     "decoder.brain_module.features=16", "decoder.brain_module.blocks=2",
                     "decoder.brain_module.fourier_harmonics=4"]


@pytest.fixture(scope="session")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("meeg")
    SyntheticWorld(SyntheticWorldConfig(**MEEG_WORLD)).write(root, ["things-meg", "things-eeg2"])
    return root


@pytest.fixture(scope="session")
def prepared(release, tmp_path_factory):
    """Both subjects' preparations (--filtering window, as mindvis-stream processes windows) in one folder."""
    parent = tmp_path_factory.mktemp("prep")
    for s in (1, 2):
        prepare_things_meg(release / "THINGS-MEG", s, parent / f"sub-BIGMEG{s}", MEGSettings(image_size=32,
                                                                                             filtering="window"))
    return parent


def align_args(prepared, cache_dir) -> list[str]:
    return ["--dataset", "things-meg", "--data-path", str(prepared), "--config", "things-meg-synthetic",
            f"data.cache_dir={cache_dir}", "train.epochs=2", "train.batch_size=4", "data.val_fraction=0.3",
            *TINY_BRAIN_MODULE]


@pytest.fixture(scope="session")
def runs(prepared, cache_dir, tmp_path_factory):
    """{"bm": a two-subject brain-module run, "ridge": a ridge run} on the prepared folder. The brain module's
    validation loss is held constant so that early stopping (patience 1) ends it after epoch 2 of 4."""
    from mindvis.align import training
    from mindvis.align.cli import main as align_main

    out = tmp_path_factory.mktemp("runs")
    common = align_args(prepared, cache_dir)
    real = training.validation_scores
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training, "validation_scores", lambda *a, **k: {**real(*a, **k), "val_loss": 1.0})
        assert align_main(common + ["--decoder", "brain-module", "--output-dir", str(out / "bm"), "--run-name", "r",
                                    "train.epochs=4", "train.patience=1"]) == 0
    assert align_main(common + ["--decoder", "ridge", "--output-dir", str(out / "ridge"), "--run-name", "r",
                                "decoder.folds=2"]) == 0
    return {"bm": out / "bm" / "r", "ridge": out / "ridge" / "r"}


def run_files(release, subject: int = 1) -> list:
    return sorted((release / "THINGS-MEG" / f"sub-BIGMEG{subject}" / "ses-01" / "meg").glob("*_meg.fif"))
