"""The NSD metric suite: each definition against a direct computation (scikit-image, scipy, numpy loops), the
networks' published layers on random-init torchvision models, and mindvis-eval --suite nsd."""
import json

import numpy as np
import pytest
import torch

from mindvis.evaluation.nsd_suite import (INPUTS, correlation_distance, load_networks, nsd_markdown, nsd_suite,
                                          pixcorr, resize, ssim_gaussian, torchvision_features,
                                          two_way_identification)


def images(n, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 8, 8, generator=g)
    return (torch.nn.functional.interpolate(base, size=size, mode="bilinear") + 0.05 * torch.rand(
        n, 3, size, size, generator=g)).clamp(0, 1)


def test_pixcorr_and_ssim_equal_the_published_definitions():
    from skimage.color import rgb2gray
    from skimage.metrics import structural_similarity

    gt, rec = images(3, 64, 0), images(3, 64, 1)
    rec[0] = (gt[0] + 0.1 * rec[0]).clamp(0, 1)  # one close pair
    g425, r425 = resize(gt, 425), resize(rec, 425)
    ref_pix = [np.corrcoef(g425[i].flatten().numpy(), r425[i].flatten().numpy())[0, 1] for i in range(3)]
    np.testing.assert_allclose(pixcorr(rec, gt).numpy(), ref_pix, atol=1e-6)
    ref_ssim = [structural_similarity(rgb2gray(r425[i].permute(1, 2, 0).double().numpy()),
                                      rgb2gray(g425[i].permute(1, 2, 0).double().numpy()), gaussian_weights=True,
                                      sigma=1.5, use_sample_covariance=False, data_range=1.0) for i in range(3)]
    np.testing.assert_allclose(ssim_gaussian(rec, gt).numpy(), ref_ssim, atol=1e-6)
    assert ref_ssim[0] > max(ref_ssim[1:])


def test_identification_and_distance_equal_loops_over_the_correlation_matrix():
    from scipy.spatial.distance import correlation

    g = torch.Generator().manual_seed(3)
    f_gt = torch.randn(7, 5, 4, generator=g)
    f_rec = f_gt + 1.5 * torch.randn(7, 5, 4, generator=g)
    R, P = f_gt.flatten(1).double().numpy(), f_rec.flatten(1).double().numpy()
    r = np.corrcoef(R, P)[:7, 7:]  # r[i, j]: ground truth i with reconstruction j, as the published code
    loop = [sum(r[i, j] < r[j, j] for i in range(7)) / 6 for j in range(7)]
    np.testing.assert_allclose(two_way_identification(f_rec, f_gt).numpy(), loop, atol=1e-12)
    np.testing.assert_allclose(correlation_distance(f_rec, f_gt).numpy(), [correlation(P[i], R[i]) for i in range(7)],
                               atol=1e-12)
    assert two_way_identification(f_gt, f_gt).eq(1).all()


def test_network_metrics_use_the_published_layers_and_inputs():
    import torchvision.models as tvm
    from torchvision.models.feature_extraction import create_feature_extractor

    from mindvis.evaluation.classifiers import IMAGENET_MEAN, IMAGENET_STD

    torch.manual_seed(0)
    alex = tvm.alexnet().eval()
    gt, rec = images(4, 64, 0), images(4, 64, 5)
    net = torchvision_features("alexnet5", alex)
    feats = net(resize(gt, 256))
    x = (resize(gt, 256) - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    direct = create_feature_extractor(alex, ["features.11"])(x)["features.11"]
    assert direct.shape == (4, 256, 15, 15) and torch.allclose(feats, direct.flatten(1), atol=1e-5)
    report = nsd_suite(torch.stack([rec, gt], 1), gt, {"alexnet5": net}, metrics=("alexnet5",))
    per_sample = report["metrics"]["alexnet5"]["per_sample"]
    assert per_sample[1] == 1.0  # the ground truth itself as the second sample
    assert per_sample[0] == pytest.approx(float(two_way_identification(net(resize(rec, 256)), feats).mean()))
    assert INPUTS["inception"][0] == 342 and INPUTS["effnet"][0] == 255 and INPUTS["clip"][0] == 224


def test_networks_load_from_local_files_and_missing_ones_are_skipped(tmp_path, monkeypatch):
    import torchvision.models as tvm
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    save_file(tvm.alexnet().state_dict(), tmp_path / "alex.safetensors")
    swav = {k: v for k, v in tvm.resnet50().state_dict().items() if not k.startswith("fc.")}  # as SwAV's file
    torch.save({f"module.{k}": v for k, v in swav.items()}, tmp_path / "swav.pth")
    CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                                   num_attention_heads=2, image_size=224, patch_size=32,
                                                   projection_dim=16)).save_pretrained(tmp_path / "clip")
    nets, skipped = load_networks({"alexnet": str(tmp_path / "alex.safetensors"), "swav": str(tmp_path / "swav.pth"),
                                   "clip": str(tmp_path / "clip")}, metrics=("alexnet2", "swav", "clip", "effnet"))
    assert set(nets) == {"alexnet2", "swav", "clip"} and set(skipped) == {"effnet"}
    gt = images(3, 64)
    report = nsd_suite(gt[:, None], gt, nets, skipped, metrics=("pixcorr", "alexnet2", "swav", "clip", "effnet"))
    m = report["metrics"]
    assert m["alexnet2"]["mean"] == m["clip"]["mean"] == 1.0 and m["swav"]["mean"] == pytest.approx(0, abs=1e-6)
    assert m["pixcorr"]["mean"] == pytest.approx(1.0) and "effnet" in report["skipped"]
    table = nsd_markdown(report)
    assert "| PixCorr | SSIM | Alex(2) |" in table and "| mindvis | 1.000 | - | 100.0 % |" in table


def test_eval_cli_suite_nsd(tmp_path, monkeypatch):
    from mindvis.evaluation.cli import main as eval_main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    gt = (images(6, 32).permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    samples = np.stack([gt, gt[::-1]], 1)  # sample 0 is the ground truth, sample 1 another image
    emb = np.random.default_rng(0).normal(size=(6, 8)).astype(np.float32)
    np.savez(tmp_path / "samples.npz", samples=samples, ground_truth=gt, meta=np.array(json.dumps({})))
    np.savez(tmp_path / "emb.npz", contrastive=emb, target=emb)
    assert eval_main(["--samples", str(tmp_path), "--suite", "nsd", "--embeddings", str(tmp_path / "emb.npz")]) == 0
    report = json.loads((tmp_path / "nsd_eval.json").read_text())
    assert report["metrics"]["pixcorr"]["per_sample"][0] == pytest.approx(1.0)
    assert report["metrics"]["image_retrieval"]["mean"] == 1.0 and report["metrics"]["image_retrieval"]["chance"] == 1 / 6
    assert {"alexnet2", "clip", "swav"} <= set(report["skipped"])
    assert eval_main(["--samples", str(tmp_path), "--suite", "nsd", "--nsd-weights", "alexnet"]) == 2
