"""Meta's brain module: spatial attention, subject layers, temporal aggregation, heads, save/reload."""
import numpy as np
import pytest
import torch

from mindvis.models.brain_module import BrainModule, BrainModuleConfig, SpatialAttention, normalised_layout


def small(aggregation="affine", subjects=("a", "b"), channels=12, times=20, **kw):
    rng = np.random.default_rng(0)
    cfg = BrainModuleConfig(positions=rng.uniform(-0.1, 0.1, (channels, 2)).tolist(), n_times=times, dim=8,
                            subjects=list(subjects), merger_channels=16, fourier_harmonics=4, hidden=8, blocks=2,
                            features=32, aggregation=aggregation, **kw)
    torch.manual_seed(0)
    return BrainModule(cfg).eval()


def test_shapes_and_the_papers_defaults():
    cfg = BrainModuleConfig(positions=[[0, 0], [1, 1]], n_times=181, dim=768)
    assert (cfg.merger_channels, cfg.fourier_harmonics, cfg.spatial_dropout, cfg.hidden, cfg.blocks,
            cfg.dilation_period, cfg.features, cfg.aggregation) == (270, 32, 0.2, 320, 5, 5, 2048, "affine")
    m = small()
    out = m(torch.randn(3, 12, 20))
    assert out["contrastive"].shape == out["regression"].shape == (3, 8)
    assert m.forward_features(torch.randn(3, 12, 20)).shape == (3, 32, 20)
    assert [b.conv1.dilation[0] for b in m.blocks] == [1, 4] and [b.conv2.dilation[0] for b in m.blocks] == [2, 8]
    with pytest.raises(ValueError, match="12 sensors"):
        m(torch.randn(3, 11, 20))
    with pytest.raises(ValueError, match="20 samples"):
        m(torch.randn(3, 12, 21))
    with pytest.raises(ValueError, match="aggregation"):
        small(aggregation="max")


def test_layout_is_the_unit_square_with_margin():
    pos = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, 0.5]])
    lay = normalised_layout(pos, 0.1)
    assert lay.min() == pytest.approx(0.1) and lay[:, 0].max() == pytest.approx(0.9)
    assert (lay[1] - lay[0])[1] == pytest.approx(0.8 / 4)  # one scale on both axes


def test_masking_a_sensor_removes_it_and_changes_only_its_sample():
    torch.manual_seed(0)
    layer = SpatialAttention(torch.rand(10, 2), 6, 4, dropout_radius=0.2).eval()
    x = torch.randn(2, 10, 5, requires_grad=True)
    drop = torch.zeros(2, 10, dtype=torch.bool)
    drop[0, 3] = True
    out = layer(x, drop)
    assert out.shape == (2, 6, 5)
    out[0].sum().backward()
    assert torch.all(x.grad[0, 3] == 0) and torch.all(x.grad[0, [0, 1, 2, 4]] != 0)
    ref = layer(x.detach())
    assert torch.equal(out[1], ref[1]) and not torch.allclose(out[0], ref[0])
    # each virtual channel is a convex mixture of the sensors left
    w = layer.scores().softmax(0)
    assert torch.allclose(layer(torch.eye(10)[None].repeat(1, 1, 1))[0].T, w, atol=1e-6)
    # spatial dropout in training removes the sensors near a random point, never all of them
    layer.train()
    x2 = torch.randn(64, 10, 5, requires_grad=True)
    layer(x2).sum().backward()
    silent = (x2.grad.abs().sum(-1) == 0)
    assert silent.any() and not silent.all(1).any()


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


def test_a_few_steps_fit_a_batch_and_reload_identically(tmp_path):
    from mindvis.contrastive import clip_loss

    m = small(aggregation="attention").train()
    x, y = torch.randn(16, 12, 20), torch.randn(16, 8)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = clip_loss(m(x, "a")["contrastive"], y, 0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    m.eval()
    m.save_pretrained(tmp_path / "bm")
    again = BrainModule.from_pretrained(tmp_path / "bm")
    assert torch.equal(again(x, "b")["regression"], m(x, "b")["regression"])
