"""MindEye's token targets through mindvis' embedder API against the reference embedders' outputs.

tests/fixtures/mindeye_targets/ holds tiny random CLIP models and the tokens MindEye1's ``Clipper`` and MindEye2's
``FrozenOpenCLIPImageEmbedder`` computed from them (tools/reference_fixtures/mindeye_targets.py; README.md there).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mindvis.models.image_embedders import (EmbedderUnavailable, cached_embeddings, load_embedder, valid_target)

FIX = Path(__file__).parent / "fixtures" / "mindeye_targets"
SETS = ["224", "256", "48x64", "64x48", "32"]


@pytest.fixture(scope="module")
def clip_tokens():
    return load_embedder(f"clip-vit-l-14-tokens:{FIX / 'clip_tiny'}"), np.load(FIX / "mindeye1.npz")


@pytest.fixture(scope="module")
def openclip_tokens():
    pytest.importorskip("open_clip")
    return load_embedder(f"openclip-bigg-14-tokens:{FIX / 'openclip_tiny'}"), np.load(FIX / "mindeye2.npz")


@pytest.mark.parametrize("images", SETS)
def test_mindeye1_clipper_tokens(clip_tokens, images):
    emb, d = clip_tokens
    out = emb(d[f"images/{images}"])
    assert out.shape == d[f"tokens/{images}"].shape == (len(d[f"images/{images}"]), 50, 8)
    assert np.abs(out - d[f"tokens/{images}"]).max() < 1e-5
    assert np.allclose(np.linalg.norm(out[:, 0], axis=-1), 1, atol=1e-5)  # scaled by the class token's norm


@pytest.mark.parametrize("images", SETS)
def test_mindeye2_openclip_tokens(openclip_tokens, images):
    emb, d = openclip_tokens
    out = emb(d[f"images/{images}"])
    assert out.shape == d[f"tokens/{images}"].shape == (len(d[f"images/{images}"]), 49, 16)
    assert np.abs(out - d[f"tokens/{images}"]).max() < 1e-5


def test_token_cache_is_float16_and_streamed(clip_tokens, tmp_path):
    emb, d = clip_tokens
    emb.batch_size = 1
    imgs = d["images/224"]
    out = cached_embeddings(emb, imgs, tmp_path)
    files = list((tmp_path / "embeddings").glob("*.npy"))
    assert len(files) == 1 and np.load(files[0], mmap_mode="r").dtype == np.float16
    assert out.dtype == np.float32 and np.allclose(out, d["tokens/224"], rtol=1e-3, atol=1e-3)
    mm = cached_embeddings(emb, imgs, tmp_path, mmap=True)  # read back, not recomputed
    assert mm.dtype == np.float16 and mm.shape == (2, 50, 8) and np.array_equal(mm, out.astype(np.float16))


def test_token_spaces_are_valid_targets():
    assert valid_target("clip-vit-l-14-tokens:openai/clip-vit-large-patch14")
    assert valid_target("openclip-bigg-14-tokens:laion/CLIP-ViT-bigG-14-laion2B-39B-b160k")
    assert not valid_target("clip-vit-l-14-tokens")


def test_missing_weights_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(EmbedderUnavailable) as e:
        load_embedder("clip-vit-l-14-tokens:openai/clip-vit-large-patch14")
    assert "\n" not in str(e.value) and "models--openai--clip-vit-large-patch14" in str(e.value)
    pytest.importorskip("open_clip")
    with pytest.raises(EmbedderUnavailable) as e:
        load_embedder("openclip-bigg-14-tokens:laion/CLIP-ViT-bigG-14-laion2B-39B-b160k")
    msg = str(e.value)
    assert "\n" not in msg and "open_clip_config.json" in msg and "models--laion--CLIP-ViT-bigG-14" in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmbedderUnavailable, match="not an OpenCLIP folder"):
        load_embedder(f"openclip-bigg-14-tokens:{tmp_path / 'empty'}")


def test_missing_open_clip_names_the_extra(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_open_clip(name, *a, **k):
        if name == "open_clip":
            raise ImportError("no open_clip")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_open_clip)
    with pytest.raises(EmbedderUnavailable, match=r"mindvis\[mindeye\]") as e:
        load_embedder(f"openclip-bigg-14-tokens:{FIX / 'openclip_tiny'}")
    assert "\n" not in str(e.value)
