import os
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "mindvis-original"

#: A synthetic world small enough for tests (seconds to generate).
TINY_WORLD = dict(image_size=64, grid=16, n_train_classes=6, images_per_class=2, n_test_classes=4,
                  hcp_subjects=3, hcp_frames=200, hcp_voxels=[48, 40, 24, 24], god_subjects=1,
                  god_voxels=[40, 32, 24, 24, 16, 16, 16], god_other_voxels=8, test_repeats=2,
                  bold5000_subjects=1, bold5000_train_images=20, bold5000_test_images=4,
                  bold5000_test_repeats=2, bold5000_voxels=[16, 8, 8, 8, 8])


def world_overrides(cache_dir) -> list[str]:
    out = [f"data.cache_dir={cache_dir}"]
    for k, v in TINY_WORLD.items():
        out.append(f"data.synthetic.{k}={v}".replace(" ", ""))
    return out


#: A tiny SC-MBM and a short schedule, for engine tests.
TINY_TRAIN = ["model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.decoder_embed_dim=16",
              "model.decoder_depth=1", "model.decoder_num_heads=2", "train.batch_size=8", "train.warmup_epochs=1",
              "train.lr=1e-3", "train.plot_samples=2"]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mindvis-cache")
    os.environ["MINDVIS_CACHE"] = str(d)
    return d


@pytest.fixture(scope="session")
def tiny_world(cache_dir):
    from mindvis.world import SyntheticWorld, SyntheticWorldConfig

    cfg = SyntheticWorldConfig(**TINY_WORLD)
    root = cache_dir / "synthetic" / cfg.fingerprint()
    SyntheticWorld(cfg).write(root)
    return root


#: A tiny stage B (random encoder, 2 sampling steps), for engine and evaluation tests.
TINY_FINETUNE = ["model.encoder=random", "train.batch_size=4", "train.grid_samples=2", "train.num_samples=1",
                 "train.sample_steps=2", "train.val_every=2", "train.checkpoint_every=2"]


@pytest.fixture(scope="session")
def tiny_prior(tmp_path_factory, tiny_world):
    """A prior trained for one epoch of each part on the tiny world at 16 px (seconds)."""
    from mindvis.world import SyntheticWorldConfig
    from mindvis.finetune.config import PriorConfig
    from mindvis.finetune.prior import train_prior

    cfg = PriorConfig(image_size=16, images_per_class=2, vq_channels=[32, 32, 32], unet_channels=[32, 32],
                      context_dim=32, vq_epochs=1, ldm_epochs=1, batch_size=8,
                      synthetic=SyntheticWorldConfig(**TINY_WORLD))
    return train_prior(cfg, tmp_path_factory.mktemp("prior") / "prior")


@pytest.fixture(scope="session")
def reference():
    return dict(np.load(FIXTURES / "reference_outputs.npz"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks run fastest on one thread, and are then immune to a busy machine's oversubscription; a module
    opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
