import numpy as np
import pytest
import torch

from mindvis.models import FMRIEncoder, MaskedBrainModel, MBMConfig, interpolate_pos_embed, mbm_config, \
    sincos_pos_embed_1d


def small(num_voxels=128, **kw):
    return MaskedBrainModel(mbm_config("tiny", num_voxels, **kw))


def test_shapes_and_masking_invariants():
    torch.manual_seed(0)
    m = small(160)  # 10 patches
    x = torch.randn(4, 1, 160)
    latent, mask, ids_restore = m.forward_encoder(x, mask_ratio=0.75)
    keep = int(10 * 0.25)
    assert latent.shape == (4, 1 + keep, 128)
    assert mask.shape == (4, 10) and torch.all(mask.sum(1) == 10 - keep)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    # ids_restore is a permutation per sample
    assert torch.all(ids_restore.sort(1).values == torch.arange(10))
    pred = m.forward_decoder(latent, ids_restore)
    assert pred.shape == (4, 10, 16)
    # masks differ between samples (per-sample shuffling)
    assert len({tuple(r.tolist()) for r in mask}) > 1


def test_kept_tokens_are_the_unmasked_patches():
    m = small(160)
    x = torch.randn(2, 10, 8)
    noise = torch.rand(2, 10)
    kept, mask, ids_restore = m.random_masking(x, 0.6, noise)
    for i in range(2):
        expected = x[i][mask[i] == 0]
        # kept tokens are the visible ones, in order of increasing noise
        order = torch.argsort(noise[i][mask[i] == 0])
        assert torch.equal(kept[i], expected[order])


def test_loss_is_on_masked_patches_only():
    m = small(160)
    x = torch.randn(3, 1, 160)
    pred = torch.randn(3, 10, 16)
    mask = torch.zeros(3, 10)
    mask[:, [1, 4, 7]] = 1
    loss = m.forward_loss(x, pred, mask)
    manual = ((pred - m.patchify(x)) ** 2).mean(-1)[:, [1, 4, 7]].mean()
    assert torch.allclose(loss, manual)
    pred2 = pred.clone()
    pred2[:, 0] += 100  # visible patch: no effect
    assert torch.allclose(m.forward_loss(x, pred2, mask), loss)
    pred2[:, 1] += 1  # masked patch: changes the loss
    assert not torch.allclose(m.forward_loss(x, pred2, mask), loss)
    # nothing masked: every patch counts
    assert torch.allclose(m.forward_loss(x, pred, torch.zeros(3, 10)), ((pred - m.patchify(x)) ** 2).mean())


def test_patchify_round_trip_and_bad_shapes():
    m = small(160)
    x = torch.randn(2, 1, 160)
    p = m.patchify(x)
    assert p.shape == (2, 10, 16) and torch.equal(p[0, 1], x[0, 0, 16:32])
    assert torch.equal(m.unpatchify(p), x)
    with pytest.raises(ValueError, match="multiple of 16"):
        m.patchify(torch.randn(2, 1, 150))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        MBMConfig(num_voxels=150)
    with pytest.raises(ValueError, match="divisible"):
        MBMConfig(num_voxels=160, embed_dim=100, num_heads=16)


def test_paper_variant_is_the_paper_architecture():
    cfg = mbm_config("paper", 4656)
    assert (cfg.patch_size, cfg.embed_dim, cfg.depth, cfg.num_heads) == (16, 1024, 24, 16)
    assert (cfg.decoder_embed_dim, cfg.decoder_depth, cfg.decoder_num_heads, cfg.mlp_ratio) == (512, 8, 16, 1.0)
    with pytest.raises(ValueError, match="unknown SC-MBM variant"):
        mbm_config("huge", 4656)


def test_paper_model_runs_a_training_step_on_cpu():
    torch.manual_seed(0)
    m = MaskedBrainModel(mbm_config("paper", 4656))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    x = torch.randn(2, 1, 4656)
    loss, pred, mask = m(x)
    loss.backward()
    opt.step()
    assert pred.shape == (2, 291, 16) and torch.isfinite(loss)


def test_sincos_table_and_cls_slot():
    pe = sincos_pos_embed_1d(8, 5, cls_token=True)
    assert pe.shape == (6, 8) and np.all(pe[0] == 0)
    assert np.allclose(pe[1:, :4], 0 * pe[1:, :4] + np.sin(np.arange(5)[:, None] / 10000 ** (np.arange(4) / 4)))


def test_position_interpolation_is_nearest_neighbour():
    pe = torch.arange(1 + 4, dtype=torch.float32).view(1, 5, 1).expand(1, 5, 2)
    out = interpolate_pos_embed(pe, 8)
    assert out.shape == (1, 9, 2)
    assert out[0, :, 0].tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4]  # cls kept, rows repeated
    assert interpolate_pos_embed(pe, 4) is pe


def test_encoder_alone_pooled_and_with_other_voxel_count():
    mbm = small(160)
    enc = mbm.encoder()
    x = torch.randn(3, 1, 160)
    tokens = enc(x)
    assert tokens.shape == (3, 10, 128)
    assert enc(x[:, 0]).shape == (3, 10, 128)  # (N, V) input accepted
    pooled = FMRIEncoder(mbm.config, global_pool=True)
    pooled.load_mbm_state_dict(mbm.state_dict())
    assert pooled(x).shape == (3, 1, 128)
    # another voxel count: positions interpolated, patch weights shared
    other = FMRIEncoder(MBMConfig(**{**mbm.config.__dict__, "num_voxels": 320}))
    other.load_mbm_state_dict(mbm.state_dict())
    assert other(torch.randn(2, 1, 320)).shape == (2, 20, 128)
    assert torch.equal(other.patch_embed.proj.weight, mbm.patch_embed.proj.weight)
    with pytest.raises(KeyError, match="lacks encoder weights"):
        enc.load_mbm_state_dict({k: v for k, v in mbm.state_dict().items() if not k.startswith("blocks.0.")})


def test_save_pretrained_round_trip(tmp_path):
    torch.manual_seed(1)
    m = small(160).eval()
    m.save_pretrained(tmp_path / "mbm")
    m2 = MaskedBrainModel.from_pretrained(tmp_path / "mbm").eval()
    x, noise = torch.randn(2, 1, 160), torch.rand(2, 10)
    with torch.no_grad():
        assert torch.equal(m(x, 0.75, noise)[1], m2(x, 0.75, noise)[1])
    enc = FMRIEncoder.from_pretrained(tmp_path / "mbm").eval()  # the encoder of a saved SC-MBM
    with torch.no_grad():
        assert torch.equal(enc(x), m.encoder().eval()(x))
    enc.save_pretrained(tmp_path / "enc")
    with torch.no_grad():
        assert torch.equal(FMRIEncoder.from_pretrained(tmp_path / "enc")(x), enc(x))
    with pytest.raises(FileNotFoundError, match="not a saved MaskedBrainModel: config.json is missing"):
        MaskedBrainModel.from_pretrained(tmp_path)


def test_global_pool_loading_keeps_trained_norms_and_the_original_filter_drops_every_norm():
    mbm = small(160)
    with torch.no_grad():  # make every LayerNorm differ from a fresh one
        for name, p in mbm.named_parameters():
            if "norm" in name:
                p.add_(0.5)
    norm_keys = {k for k in FMRIEncoder(mbm.config, global_pool=True).state_dict() if "norm" in k}
    assert {"norm.weight", "blocks.0.norm1.weight", "blocks.0.norm2.bias"} <= norm_keys
    default = FMRIEncoder(mbm.config, global_pool=True)
    default.load_mbm_state_dict(mbm.state_dict())
    sd = mbm.state_dict()
    assert all(torch.equal(default.state_dict()[k], sd[k]) for k in norm_keys)  # every trained norm loaded
    original = FMRIEncoder(mbm.config, global_pool=True)
    original.load_mbm_state_dict(mbm.state_dict(), drop_norms=True)
    for k, v in original.state_dict().items():
        if k in norm_keys:  # fresh LayerNorms: weight 1, bias 0, exactly what the original leaves
            assert torch.equal(v, torch.ones_like(v) if k.endswith("weight") else torch.zeros_like(v)), k
        elif k not in ("mask_token",):
            assert torch.equal(v, sd[k]), k  # everything else loaded
    # without global pooling the original loads every norm, and so does drop_norms
    tokens = FMRIEncoder(mbm.config)
    tokens.load_mbm_state_dict(mbm.state_dict(), drop_norms=True)
    assert torch.equal(tokens.norm.weight, mbm.norm.weight)
