"""Pieces of brain-to-embedding alignment: ridge (against scikit-learn), losses (against hand computation),
retrieval metrics (against plain loops), decoders and image embedders."""
import math

import numpy as np
import pytest
import torch

from mindvis.contrastive import (Temperature, bimixco_loss, clip_loss, mindeye_schedule, mixco, mse_loss,
                                 soft_clip_loss)
from mindvis.evaluation import retrieval as R
from mindvis.models.brain_decoders import MBMDecoder, MBMDecoderConfig, MindEyeMLP, MLPConfig
from mindvis.models.ridge import RidgeConfig, RidgeDecoder, kfold_indices
from mindvis.models.sc_mbm import MaskedBrainModel, mbm_config

sklearn = pytest.importorskip("sklearn")


# ----------------------------------------------------------------------------- ridge
def _regression(n, v, t, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, v)) + 3.0  # an offset, so the intercept matters
    y = x[:, :6] @ rng.normal(size=(6, t)) + 2.0 * rng.normal(size=(n, t)) - 5.0
    return x, y


@pytest.mark.parametrize("n,v", [(70, 150), (150, 30)])  # dual (voxels > trials) and primal forms
def test_ridge_equals_scikit_learn_ridgecv(n, v):
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold

    x, y = _regression(n, v, 4)
    alphas = list(np.logspace(-2, 5, 15))
    ours = RidgeDecoder.fit(x, y, RidgeConfig(v, 4, alphas, folds=5))
    ref = RidgeCV(alphas=alphas, cv=KFold(5)).fit(x, y)
    assert np.allclose(ours.alpha.numpy(), ref.alpha_)
    assert np.abs(ours.coef_ - ref.coef_).max() <= 1e-5 * max(1.0, np.abs(ref.coef_).max())
    assert np.abs(ours.intercept_ - ref.intercept_).max() <= 1e-5 * max(1.0, np.abs(ref.intercept_).max())
    pred = ours(torch.from_numpy(x).float()).double().numpy()
    assert np.allclose(pred, ref.predict(x), rtol=1e-4, atol=1e-4)  # stored as float32


def test_ridge_per_target_penalties_equal_ridgecv_per_column_and_ridge():
    from sklearn.linear_model import Ridge, RidgeCV
    from sklearn.model_selection import KFold

    x, y = _regression(80, 120, 3, seed=1)
    y[:, 2] = 0.01 * y[:, 2] + 5 * np.random.default_rng(2).normal(size=80)  # a mostly-noise target
    alphas = list(np.logspace(-2, 5, 15))
    ours = RidgeDecoder.fit(x, y, RidgeConfig(120, 3, alphas, folds=4, per_target=True))
    for t in range(3):
        assert ours.alpha[t].item() == pytest.approx(RidgeCV(alphas=alphas, cv=KFold(4)).fit(x, y[:, t]).alpha_)
    assert len(set(ours.alpha.tolist())) > 1
    ref = Ridge(alpha=ours.alpha.numpy()).fit(x, y)
    assert np.abs(ours.coef_ - ref.coef_).max() <= 1e-5 * np.abs(ref.coef_).max()


def test_kfold_sizes_match_scikit_learn():
    from sklearn.model_selection import KFold

    ours = kfold_indices(23, 5)
    ref = [test for _, test in KFold(5).split(np.zeros(23))]
    assert all(np.array_equal(a, b) for a, b in zip(ours, ref))
    with pytest.raises(ValueError, match="folds"):
        kfold_indices(3, 5)


def test_ridge_save_reload_and_bad_input(tmp_path):
    x, y = _regression(40, 20, 3)
    m = RidgeDecoder.fit(x, y, RidgeConfig(20, 3, [1.0, 10.0], folds=3))
    m.save_pretrained(tmp_path / "r")
    again = RidgeDecoder.from_pretrained(tmp_path / "r")
    xt = torch.randn(5, 20)
    assert torch.equal(m(xt), again(xt)) and torch.equal(m.alpha, again.alpha)
    x[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        RidgeDecoder.fit(x, y)
    with pytest.raises(ValueError, match="same N"):
        RidgeDecoder.fit(x[:10], y)


# ----------------------------------------------------------------------------- losses
E = torch.eye(2)
P = math.e / (1 + math.e)  # softmax of [1, 0]


def test_clip_loss_by_hand():
    assert clip_loss(E, E, 1.0).item() == pytest.approx(-math.log(P))
    assert clip_loss(E, E.flip(0), 1.0).item() == pytest.approx(-math.log(1 - P))  # each row prefers the wrong one
    assert clip_loss(3 * E, E, 1.0).item() == pytest.approx(-math.log(P))  # scale-free (cosine)
    t = Temperature(0.5)
    assert t().item() == pytest.approx(0.5)
    loss = clip_loss(E, E, t())
    loss.backward()
    assert t.log_scale.grad is not None and loss.item() == pytest.approx(-math.log(math.e ** 2 / (1 + math.e ** 2)))


def test_soft_clip_loss_by_hand():
    # targets = identity: the soft target of row i is softmax(e_i . e_j / T) = [P, 1 - P]
    entropy = -(P * math.log(P) + (1 - P) * math.log(1 - P))
    assert soft_clip_loss(E, E, 1.0).item() == pytest.approx(entropy)


def test_bimixco_loss_by_hand():
    perm, betas = torch.tensor([1, 0]), torch.tensor([0.7, 1.0])
    # row 0 targets [0.7, 0.3], row 1 targets [0, 1]; the transposed direction uses the transposed targets
    expected = (-1.7 * math.log(P) - 0.3 * math.log(1 - P)) / 2
    assert bimixco_loss(E, E, perm, betas, 1.0).item() == pytest.approx(expected)
    # a row paired with itself keeps all its weight on its own image
    same = bimixco_loss(E, E, torch.tensor([0, 1]), torch.tensor([0.6, 1.0]), 1.0).item()
    assert same == pytest.approx(-math.log(P))


def test_mixco_mixes_selected_rows_only():
    torch.manual_seed(0)
    x = torch.randn(64, 10)
    mixed, perm, betas, sel = mixco(x.clone(), beta=0.15, select_p=0.5)
    expected = betas[:, None] * x + (1 - betas[:, None]) * x[perm]
    assert torch.allclose(mixed, expected)
    assert torch.all(betas[~sel] == 1) and 0 < sel.sum() < 64
    assert ((betas[sel] > 0) & (betas[sel] < 1)).all()


def test_mse_and_schedule():
    assert mse_loss(torch.ones(2, 3), torch.zeros(2, 3)).item() == 1.0
    assert [mindeye_schedule(p, 1 / 3) for p in (0.0, 0.3, 0.34, 0.9)] == ["bimixco", "bimixco", "softclip", "softclip"]
    with pytest.raises(ValueError, match="must both be"):
        clip_loss(torch.ones(2, 3), torch.ones(3, 3))


# ----------------------------------------------------------------------------- retrieval metrics
def _loop_rank(pred, target):
    n = len(pred)
    ranks = []
    for i in range(n):
        sims = [float(np.dot(pred[i], target[j]) / np.linalg.norm(pred[i]) / np.linalg.norm(target[j]))
                for j in range(n)]
        ranks.append(sum(1 for j in range(n) if sims[j] >= sims[i]))
    return np.array(ranks)


def test_retrieval_metrics_equal_plain_loops():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(30, 8))
    pred = target + 1.5 * rng.normal(size=(30, 8))
    p, t = torch.from_numpy(pred), torch.from_numpy(target)
    fwd, bwd = _loop_rank(pred, target), _loop_rank(target, pred)
    sim = R.cosine_similarity(p, t)
    for k in (1, 5):
        assert R.top_k(sim, k) == pytest.approx(np.mean(fwd <= k))
        assert R.top_k(sim.T, k) == pytest.approx(np.mean(bwd <= k))
    assert R.relative_median_rank(sim) == pytest.approx(np.median((fwd - 1) / 29))
    r = [np.corrcoef(pred[:, d], target[:, d])[0, 1] for d in range(8)]
    assert R.embedding_correlation(p, t) == pytest.approx(np.mean(r))
    cos = [np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(pred, target)]
    assert R.embedding_cosine(p, t) == pytest.approx(np.mean(cos))
    pcc = np.array([[np.corrcoef(pred[i], target[j])[0, 1] for j in range(30)] for i in range(30)])
    ident = np.mean([np.sum(pcc[i, i] > np.delete(pcc[i], i)) / 29 for i in range(30)])
    rep = R.embedding_report(p, t, mindeye_subset=10, draws=4)
    assert rep["two_way_identification"]["value"] == pytest.approx(ident)
    assert rep["top1_brain_to_image"]["chance"] == pytest.approx(1 / 30)


def test_mindeye_protocol_in_the_report_equals_a_loop():
    """Image / brain retrieval as MindEye2 computes them: RandomState(42) draws, image retrieval ranks decoded rows."""
    rng = np.random.default_rng(1)
    target = rng.normal(size=(40, 6))
    pred = target + 1.5 * rng.normal(size=(40, 6))
    rep = R.embedding_report(torch.from_numpy(pred), torch.from_numpy(target), mindeye_subset=12, draws=5)
    draws = np.random.RandomState(42)
    image, brain = [], []
    for _ in range(5):
        idx = draws.choice(np.arange(40), size=12, replace=False)
        brain.append(np.mean(_loop_rank(pred[idx], target[idx]) == 1))
        image.append(np.mean(_loop_rank(target[idx], pred[idx]) == 1))
    assert image != brain  # the two directions differ on these data, so the test tells them apart
    assert rep["image_retrieval"]["value"] == pytest.approx(np.mean(image))
    assert rep["image_retrieval"]["std"] == pytest.approx(np.std(image))
    assert rep["brain_retrieval"]["value"] == pytest.approx(np.mean(brain))
    assert rep["brain_retrieval"]["chance"] == pytest.approx(1 / 12)


def test_perfect_and_shape_errors():
    t = torch.randn(10, 4)
    rep = R.embedding_report(t, t, mindeye_subset=5, draws=2)
    assert rep["top1_brain_to_image"]["value"] == 1.0 and rep["relative_median_rank"]["value"] == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        R.embedding_report(t, torch.randn(10, 5))


# ----------------------------------------------------------------------------- decoders
def test_mlp_decoder_shapes_and_reload(tmp_path):
    m = MindEyeMLP(MLPConfig(96, 12, hidden=32, blocks=2, projector_hidden=16)).eval()
    out = m(torch.randn(5, 1, 96))
    assert out["regression"].shape == out["contrastive"].shape == (5, 12)
    m.save_pretrained(tmp_path / "m")
    x = torch.randn(3, 96)
    again = MindEyeMLP.from_pretrained(tmp_path / "m").eval()
    assert torch.equal(m(x)["contrastive"], again(x)["contrastive"])


@pytest.mark.parametrize("pool", ["flatten", "mean"])
def test_mbm_decoder_carries_stage_a_weights_and_freezes(pool, tmp_path):
    mbm = MaskedBrainModel(mbm_config("tiny", 64, embed_dim=32, depth=1, num_heads=2))
    enc = mbm.encoder()
    dec = MBMDecoder(MBMDecoderConfig(vars(enc.config), 10, 16, pool, 8), enc)
    assert torch.equal(dec.encoder.blocks[0].attn.qkv.weight, mbm.blocks[0].attn.qkv.weight)
    assert dec(torch.randn(4, 64))["regression"].shape == (4, 10)
    dec.encoder.requires_grad_(False)
    dec(torch.randn(4, 1, 64))["contrastive"].sum().backward()
    assert all(p.grad is None for p in dec.encoder.parameters())
    assert dec.head.weight.grad is not None if pool == "flatten" else dec.head[1].weight.grad is not None
    dec.save_pretrained(tmp_path / "d")
    again = MBMDecoder.from_pretrained(tmp_path / "d").eval()
    x = torch.randn(2, 64)
    assert torch.equal(dec.eval()(x)["regression"], again(x)["regression"])


# ----------------------------------------------------------------------------- image embedders
def test_clip_and_dinov2_targets_from_local_folders_and_cache(tmp_path, monkeypatch):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, Dinov2Config, Dinov2Model

    from mindvis.models import image_embedders as E

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                   num_attention_heads=2, image_size=32, patch_size=8,
                                                   projection_dim=12)).save_pretrained(tmp_path / "clip")
    Dinov2Model(Dinov2Config(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                             image_size=32, patch_size=8)).save_pretrained(tmp_path / "dino")
    images = np.random.default_rng(0).integers(0, 256, (5, 40, 40, 3), dtype=np.uint8)
    clip = E.load_embedder(f"clip:{tmp_path / 'clip'}")
    emb = E.cached_embeddings(clip, images, tmp_path / "cache")
    assert emb.shape == (5, 12) and np.isfinite(emb).all()
    # the same images differ from other images, and a second call reads the cache instead of the model
    assert not np.allclose(emb[0], emb[1])
    monkeypatch.setattr(clip, "fn", lambda x: (_ for _ in ()).throw(AssertionError("model called again")))
    assert np.array_equal(E.cached_embeddings(clip, images, tmp_path / "cache"), emb)
    dino = E.load_embedder(f"dinov2:{tmp_path / 'dino'}")
    assert dino(images).shape == (5, 16)
    with pytest.raises(E.EmbedderUnavailable, match="not on this machine"):
        E.load_embedder("clip:nobody/no-such-clip-model")
    with pytest.raises(ValueError, match="unknown target space"):
        E.load_embedder("vgg:x")


def _tiny_clip_tokenizer(folder):
    """A CLIP BPE tokenizer with a byte-level vocabulary and no merges (enough for the pipeline's plumbing)."""
    import json as _json

    from transformers import CLIPTokenizer

    # byte-level BPE alphabet: printable bytes stand for themselves, the others for code points from 256 on
    printable = set(range(33, 127)) | set(range(161, 173)) | set(range(174, 256))
    extra = iter(range(256, 512))
    chars = [chr(b) if b in printable else chr(next(extra)) for b in range(256)]
    vocab = {t: i for i, t in enumerate(["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars])}
    folder.mkdir()
    (folder / "vocab.json").write_text(_json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def test_stable_unclip_pipeline_loads_from_a_local_folder_and_takes_embeddings(tmp_path, monkeypatch):
    """The real-data generation path: a diffusers Stable unCLIP folder (here tiny and random) turns decoded CLIP
    image embeddings into images."""
    from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, StableUnCLIPImg2ImgPipeline,
                           UNet2DConditionModel)
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    from transformers import (CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig,
                              CLIPVisionModelWithProjection)

    from mindvis.pipelines.embedding_pipeline import load_unclip, unclip_images

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    d = 32
    pipe = StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(crop_size=32, size=32),
        image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=d, projection_dim=d,
                                                                     num_hidden_layers=1, num_attention_heads=2,
                                                                     image_size=32, intermediate_size=37,
                                                                     patch_size=8)),
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=d),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=_tiny_clip_tokenizer(tmp_path / "tok"),
        text_encoder=CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=d,
                                                  projection_dim=d, intermediate_size=37, num_attention_heads=2,
                                                  num_hidden_layers=1, vocab_size=600)),
        unet=UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4,
                                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(32, 64),
                                  attention_head_dim=(2, 4), class_embed_type="projection",
                                  projection_class_embeddings_input_dim=2 * d, cross_attention_dim=d,
                                  layers_per_block=1, use_linear_projection=True),
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1),
        vae=AutoencoderKL(block_out_channels=(32,), norm_num_groups=32))
    pipe.save_pretrained(tmp_path / "unclip")
    loaded = load_unclip(tmp_path / "unclip")
    emb = torch.randn(2, d)
    a = unclip_images(loaded, emb, num_inference_steps=2)
    assert a.shape == (2, 3, 8, 8) and a.min() >= 0 and a.max() <= 1
    b = unclip_images(loaded, -emb, num_inference_steps=2)
    assert not torch.allclose(a, b)  # the images follow the embeddings
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_unclip(tmp_path / "tok")


def test_mindeye_mlp_at_nsd_size_takes_a_training_step():
    """MindEye's sizes (hidden 4096, 4 blocks, projector 2048) on 15,000 voxels and a 768-d target, on the CPU."""
    m = MindEyeMLP(MLPConfig(15000, 768))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    x, y = torch.randn(4, 15000), torch.randn(4, 768)
    out = m(x)
    loss = clip_loss(out["contrastive"], y) + mse_loss(out["regression"], y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and sum(p.numel() for p in m.parameters()) > 100e6
