"""The original MinD-Vis stage-A checkpoint loads safely and reproduces the original's outputs."""
import os
import pickle

import numpy as np
import pytest
import torch

from mindvis.commands import convert_main
from mindvis.compat import (OriginalCheckpointError, export_original_mbm, load_original_checkpoint,
                            load_original_encoder, load_original_mbm)
from mindvis.models import MaskedBrainModel

from .conftest import FIXTURES

CKPT = FIXTURES / "fmri_encoder.pth"


def test_plain_torch_load_cannot_read_it_but_mindvis_can():
    with pytest.raises(Exception):
        torch.load(CKPT, weights_only=True)
    ckpt = load_original_checkpoint(CKPT)
    assert isinstance(ckpt["config"], dict)
    assert ckpt["config"]["num_voxels"] == 208 and ckpt["config"]["embed_dim"] == 64


def test_mbm_reproduces_reference_outputs(reference):
    model, config = load_original_mbm(CKPT)
    assert model.config.num_voxels == 208 and model.config.decoder_depth == 2
    x = torch.from_numpy(reference["mae_input"])
    with torch.no_grad():
        latent, _, ids_restore = model.forward_encoder(x, mask_ratio=0.0)
        pred = model.forward_decoder(latent, ids_restore)
        loss = model.forward_loss(x, pred, torch.ones(pred.shape[:2]))
    np.testing.assert_allclose(pred.numpy(), reference["mae_pred_mask0"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loss.item(), reference["mae_loss_allmasked"], rtol=1e-5)


def test_encoder_reproduces_reference_latent(reference):
    enc = load_original_encoder(CKPT)
    with torch.no_grad():
        out = enc(torch.from_numpy(reference["encoder_input"]))
    np.testing.assert_allclose(out.numpy(), reference["encoder_latent"], rtol=1e-5, atol=1e-5)


def test_state_dict_keys_match_the_original():
    original = load_original_checkpoint(CKPT)["model"]
    model, _ = load_original_mbm(CKPT)
    assert set(model.state_dict()) == set(original)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/mindvis-pwned",))


def test_restricted_unpickler_refuses_code(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "config": _Evil()}, path)
    with pytest.raises(OriginalCheckpointError, match="refused: it holds a pickled "
                                                      "(posix|os).system") as err:
        load_original_checkpoint(path)
    assert "weights_only=False" not in str(err.value) and "\n" not in str(err.value)  # no advice to run it anyway
    assert not os.path.exists("/tmp/mindvis-pwned")
    # a plain pickle that is not a torch file at all
    bad = tmp_path / "bad.pth"
    bad.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(OriginalCheckpointError):
        load_original_checkpoint(bad)
    with pytest.raises(FileNotFoundError):
        load_original_checkpoint(tmp_path / "missing.pth")


def test_export_to_original_layout_round_trip(tmp_path):
    model, _ = load_original_mbm(CKPT)
    out = tmp_path / "exported.pth"
    export_original_mbm(model, out, epoch=7)
    raw = torch.load(out, weights_only=True)  # plain data only: the safe loader suffices
    assert raw["epoch"] == 7 and raw["config"]["num_voxels"] == 208
    again, _ = load_original_mbm(out)
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])


def test_convert_command_both_ways(tmp_path, reference):
    assert convert_main(["from-original", str(CKPT), str(tmp_path / "m")]) == 0
    m = MaskedBrainModel.from_pretrained(tmp_path / "m")
    assert convert_main(["to-original", str(tmp_path / "m"), str(tmp_path / "back.pth")]) == 0
    back, _ = load_original_mbm(tmp_path / "back.pth")
    x = torch.from_numpy(reference["mae_input"])
    noise = torch.rand(4, 13)
    with torch.no_grad():
        assert torch.equal(m(x, 0.5, noise)[1], back(x, 0.5, noise)[1])
    assert convert_main(["from-original", str(tmp_path / "nope.pth"), str(tmp_path / "x")]) == 2
