"""Meta's brain module: brainmagick's settings, spatial attention and its masking, subject layers, temporal
aggregation, heads, save/reload. (Equality with brainmagick's own code: tests/test_brainmagick.py.)"""
import numpy as np
import pytest
import torch

from mindvis.models.brain_module import BrainModule
from mindvis.models.brain_module_config import BENCHETRIT_2023, BrainModuleConfig, benchetrit_config
from mindvis.models.brain_module_positions import fourier_embedding, normalise_positions


def small(aggregation="affine", subjects=("a", "b"), channels=12, times=20, positions=None, **kw):
    rng = np.random.default_rng(0)
    pos = rng.uniform(-0.1, 0.1, (channels, 2)).tolist() if positions is None else positions
    cfg = BrainModuleConfig(positions=pos, n_times=times, dim=8, subjects=list(subjects), merger_channels=16,
                            fourier_harmonics=4, hidden=8, depth=4, features=32, aggregation=aggregation, **kw)
    torch.manual_seed(0)
    return BrainModule(cfg).eval()


def test_shapes_and_brainmagicks_defaults():
    cfg = BrainModuleConfig(positions=[[0, 0], [1, 1]], n_times=181, dim=768)
    assert (cfg.merger_channels, cfg.fourier_harmonics, cfg.merger_pos_dim, cfg.spatial_dropout, cfg.initial_channels,
            cfg.hidden, cfg.depth, cfg.kernel_size, cfg.dilation_growth, cfg.dilation_period, cfg.skip, cfg.batch_norm,
            cfg.glu, cfg.glu_context, cfg.glu_dilation, cfg.channel_dropout, cfg.features, cfg.aggregation) == \
        (270, 32, 2048, 0.2, 270, 320, 10, 3, 2, 5, True, True, 2, 1, 1, 0.0, 2048, "affine")
    assert BrainModuleConfig(positions=[[0, 0]], n_times=1, dim=1, blocks=5).depth == 10  # legacy: blocks x glu
    m = small()
    out = m(torch.randn(3, 12, 20))
    assert out["contrastive"].shape == out["regression"].shape == (3, 8)
    assert m.forward_features(torch.randn(3, 12, 20)).shape == (3, 32, 20)
    with pytest.raises(ValueError, match="12 sensors"):
        m(torch.randn(3, 11, 20))
    with pytest.raises(ValueError, match="20 samples"):
        m(torch.randn(3, 12, 21))
    with pytest.raises(ValueError, match="aggregation"):
        small(aggregation="max")


def test_dilations_glus_and_skips_follow_brainmagick():
    m = BrainModule(BrainModuleConfig(positions=[[0, 0], [1, 1]], n_times=8, dim=2, merger_channels=4,
                                      fourier_harmonics=2, hidden=6, depth=7, features=4, aggregation="mean"))
    convs = [layer[0] for layer in m.encoder.sequence]
    assert [c.dilation[0] for c in convs] == [1, 2, 4, 8, 16, 1, 2]  # 2^(k mod 5)
    assert [c.padding[0] for c in convs] == [1, 2, 4, 8, 16, 1, 2]
    glus = [g for g in m.encoder.glus]
    assert [g is not None for g in glus] == [False, True, False, True, False, True, False]
    assert all(g[0].kernel_size == (3,) and g[0].dilation == (1,) and g[0].padding == (1,) for g in glus if g)
    old = BrainModule(BrainModuleConfig(positions=[[0, 0], [1, 1]], n_times=8, dim=2, merger_channels=4,
                                        fourier_harmonics=2, hidden=6, depth=2, features=4, glu_dilation=2))
    assert old.encoder.glus[1][0].dilation == (2,) and old.encoder.glus[1][0].padding == (2,)
    # the skip: each layer's output plus its input wherever the shapes match (not the first layer: 4 -> 6), then
    # the GLU after every second layer
    seq = m.encoder.eval()
    x = torch.randn(2, 4, 8)
    with torch.no_grad():
        manual = seq.sequence[0](x)
        manual = seq.glus[1](seq.sequence[1](manual) + manual)
        manual = seq.sequence[2](manual) + manual
        manual = seq.glus[3](seq.sequence[3](manual) + manual)
        manual = seq.sequence[4](manual) + manual
        manual = seq.glus[5](seq.sequence[5](manual) + manual)
        manual = seq.sequence[6](manual) + manual
        assert torch.allclose(seq(x), manual)


def test_positions_are_normalised_per_axis_and_missing_ones_masked():
    pos = np.array([[-2.0, 0.0], [2.0, 1.0], [0.0, 0.5], [np.nan, np.nan]])
    lay = normalise_positions(pos)
    assert np.allclose(lay[:3], [[0, 0], [1, 1], [0.5, 0.5]]) and np.isnan(lay[3]).all()
    assert np.array_equal(normalise_positions(lay), lay, equal_nan=True)  # idempotent
    # the Fourier embedding: cos then sin of 2 pi (k (x + m) + l (y + m)) / (1 + 2 m), k outer
    emb = fourier_embedding(torch.tensor([[0.3, 0.7]]), 3, 0.2)[0]
    k, l = 2, 1
    phase = 2 * np.pi * (k * 0.5 + l * 0.9) / 1.4
    assert emb.shape == (18,) and abs(emb[k * 3 + l] - np.cos(phase)) < 1e-5 and abs(emb[9 + k * 3 + l] - np.sin(phase)) < 1e-5
    # a channel without a position (None) takes no part in any mixture
    m = small(positions=np.random.default_rng(1).uniform(0, 1, (11, 2)).tolist() + [None])
    x = torch.randn(2, 12, 20, requires_grad=True)
    m.forward_features(x).sum().backward()
    assert torch.all(x.grad[:, 11] == 0) and torch.all(x.grad[:, :11].abs().sum(-1) > 0)
    with pytest.raises(ValueError, match="no sensor has a position"):
        small(positions=[None, None])


def test_spatial_dropout_draws_one_point_per_batch():
    torch.manual_seed(0)
    m = small(channels=30).train()
    x = torch.randn(16, 30, 20, requires_grad=True)
    pos, valid = m.batch_positions(x)
    torch.manual_seed(1)
    point = torch.rand(2)
    assert ((pos[0] - point).norm(dim=-1) <= 0.2).any()  # this seed's point removes some channels
    torch.manual_seed(1)
    m.merger(x, pos, valid).sum().backward()
    silent = x.grad.abs().sum(-1) == 0  # (N, C): the channels the spatial dropout removed
    assert silent.any() and (silent == silent[:1]).all()  # the same channels in every sample of the batch
    # the point can be given; channels within the radius of it are removed (<=), the others kept
    centre = pos[0, 3]
    w = m.merger.weights(pos, valid, centre)
    near = (pos[0] - centre).norm(dim=-1) <= m.config.spatial_dropout
    assert (w[:, :, near] == 0).all() and (w[:, :, ~near] > 0).all()
    # never every channel of a sample (brainmagick's softmax would return NaN there)
    wide = small(channels=3, spatial_dropout=0.99).train()
    x3 = torch.randn(2, 3, 20)
    assert torch.isfinite(wide.merger(x3, *wide.batch_positions(x3), torch.tensor([0.5, 0.5]))).all()


def test_per_sample_montages():
    m = small(channels=6)
    x = torch.randn(2, 6, 20)
    pos = torch.rand(2, 6, 2)
    pos[1, 2] = float("nan")
    both = m(x, positions=pos)["regression"]
    assert torch.allclose(both[0], m(x[:1], positions=pos[0])["regression"][0], atol=1e-5)
    assert torch.allclose(both[1], m(x[1:], positions=pos[1])["regression"][0], atol=1e-5)


def test_subject_layers_use_each_samples_subject():
    m = small()
    x = torch.randn(4, 12, 20)
    mixed = m(x, ["a", "b", "a", "b"])["regression"]
    assert torch.allclose(mixed[[0, 2]], m(x[[0, 2]], "a")["regression"], atol=1e-5)
    assert torch.allclose(mixed[[1, 3]], m(x[[1, 3]], "b")["regression"], atol=1e-5)
    assert not torch.allclose(m(x, "a")["regression"], m(x, "b")["regression"])
    with torch.no_grad():
        m.subject_layers.weights[1].mul_(3)  # subject b's layer leaves subject a's outputs unchanged
    assert torch.allclose(m(x[[0, 2]], "a")["regression"], mixed[[0, 2]], atol=1e-5)
    with pytest.raises(KeyError, match="no subject layer"):
        m(x, "z")
    # brainmagick's initialisation: N(0, 1) / sqrt(C), identity / sqrt(C) on request
    big = BrainModule(BrainModuleConfig(positions=[[0, 0], [1, 1]], n_times=4, dim=2, subjects=list("abc"),
                                        merger_channels=200, fourier_harmonics=2, hidden=4, depth=1, features=4))
    assert abs(big.subject_layers.weights.std().item() * 200**0.5 - 1) < 0.02
    assert abs(big.merger.heads.std().item() * 8**0.5 - 1) < 0.1
    ident = small(subject_layers_id=True)
    assert torch.allclose(ident.subject_layers.weights[0], torch.eye(16) / 4)


def test_temporal_aggregations():
    for name in ("affine", "mean", "attention"):
        m = small(aggregation=name)
        z = torch.randn(2, 32, 20)
        h = m.forward_aggregate(z)
        assert h.shape == (2, 32)
        if name == "mean":
            assert torch.allclose(h, z.mean(-1))
        elif name == "affine":
            w, b = m.aggregate.weight[0], m.aggregate.bias[0]
            assert torch.allclose(h, z @ w + b, atol=1e-5)
        else:  # a convex combination over time: equal samples give that sample back
            flat = z[..., :1].expand(-1, -1, 20)
            assert torch.allclose(m.forward_aggregate(flat), z[..., 0], atol=1e-5)
    none = BrainModule(BrainModuleConfig(
        positions=[[0, 0], [1, 1]], n_times=0, dim=0, merger_channels=4, fourier_harmonics=2, hidden=4, depth=2,
        features=6, aggregation="none"))
    assert none.eval()(torch.randn(3, 2, 9))["features"].shape == (3, 6, 9)


def test_benchetrit_preset():
    cfg = benchetrit_config([[0, 0], [1, 1]], 181, 768, ["1", "2"])
    assert all(getattr(cfg, k) == v for k, v in BENCHETRIT_2023.items()) and cfg.aggregation == "affine"


def test_channel_dropout_zeroes_position_less_channels():
    m = small(positions=np.random.default_rng(1).uniform(0, 1, (11, 2)).tolist() + [None], channel_dropout=0.3)
    x = torch.randn(2, 12, 20)
    pos, valid = m.batch_positions(x)
    assert (m.channel_dropout(x, pos, valid)[:, 11] == 0).all()
    m.train()
    torch.manual_seed(0)
    out = m.channel_dropout(x, pos, valid)
    dropped = (out.abs().sum(-1) == 0)[0]
    assert dropped[11] and dropped.sum() >= 1 and (out[:, ~dropped].abs() >= x[:, ~dropped].abs() - 1e-6).all()


def test_a_few_steps_fit_a_batch_and_reload_identically(tmp_path):
    from mindvis.models.brain_module_loss import brainmagick_clip_loss

    m = small(aggregation="attention").train()
    x, y = torch.randn(16, 12, 20), torch.randn(16, 8)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = brainmagick_clip_loss(m(x, "a")["contrastive"], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    m.eval()
    m.save_pretrained(tmp_path / "bm")
    again = BrainModule.from_pretrained(tmp_path / "bm")
    assert torch.equal(again(x, "b")["regression"], m(x, "b")["regression"])
    assert again.config == m.config
