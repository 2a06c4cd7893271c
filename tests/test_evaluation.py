"""Metrics against hand-computable cases, the sampling CLI and the evaluation CLI on the synthetic world."""
import json
import shutil

import numpy as np
import pytest
import torch

from mindvis.config import build_config
from mindvis.configs import preset_path
from mindvis.evaluation import evaluate
from mindvis.evaluation.cli import main as eval_main
from mindvis.evaluation.metrics import (frechet_distance, identification, n_way_top_k, pairwise_mse, pairwise_pcc,
                                        pairwise_ssim)
from mindvis.finetune import engine
from mindvis.finetune.config import FinetuneConfig
from mindvis.pipelines.sample_cli import main as sample_main

from .conftest import TINY_FINETUNE, world_overrides


def test_n_way_perfect_random_and_bounds():
    g = torch.Generator().manual_seed(0)
    true = torch.randint(0, 100, (400,), generator=g)
    perfect = torch.nn.functional.one_hot(true, 100).float()
    assert torch.all(n_way_top_k(perfect, true, 50, 1, 20, g) == 1)
    random = torch.rand(400, 100, generator=g).softmax(-1)
    acc = n_way_top_k(random, true, 50, 1, 50, g).mean().item()
    assert abs(acc - 1 / 50) < 0.01  # chance
    assert abs(n_way_top_k(random, true, 10, 5, 50, g).mean().item() - 0.5) < 0.05  # top-5 of 10
    with pytest.raises(ValueError, match="larger than the number of classes"):
        n_way_top_k(random, true, 101)


def test_identification_identical_and_shuffled():
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(40, 3, 16, 16, generator=g)
    for sim, higher in ((pairwise_mse(gt, gt), False), (pairwise_pcc(gt, gt), True), (pairwise_ssim(gt, gt), True)):
        assert torch.all(identification(sim, higher) == 1.0)
    shuffled = gt[torch.randperm(40, generator=g)]
    assert abs(identification(pairwise_pcc(shuffled, gt)).mean().item() - 0.5) < 0.1
    # a hand-checked 3 x 3 case: reconstruction 0 beats both others, 1 beats one, 2 none
    s = torch.tensor([[0.9, 0.1, 0.2], [0.5, 0.6, 0.7], [0.9, 0.8, 0.1]])
    assert identification(s).tolist() == [1.0, 0.5, 0.0]


def test_pairwise_matrices_equal_direct_computation():
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(4, 3, 12, 12, generator=g), torch.rand(5, 3, 12, 12, generator=g)
    mse = pairwise_mse(a, b)
    assert torch.allclose(mse[1, 3], ((a[1] - b[3]) ** 2).mean(), atol=1e-6)
    pcc = pairwise_pcc(a, b)
    assert torch.allclose(pcc[2, 0], torch.corrcoef(torch.stack([a[2].flatten(), b[0].flatten()]))[0, 1], atol=1e-5)
    from skimage.metrics import structural_similarity

    ssim = pairwise_ssim(a, b)
    ref = structural_similarity(a[3].permute(1, 2, 0).numpy(), b[2].permute(1, 2, 0).numpy(), data_range=1,
                                channel_axis=-1)
    assert ssim.shape == (4, 5) and abs(ssim[3, 2].item() - ref) < 1e-6  # scikit-image's default SSIM
    assert torch.allclose(pairwise_ssim(a, a).diag(), torch.ones(4))


@pytest.mark.parametrize("compile", [False, True])
def test_ssim_kernels_equal_scikit_image(compile):
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(3, 3, 40, 36, generator=g), torch.rand(4, 3, 40, 36, generator=g)
    b[1] = (a[0] + 0.1 * b[1]).clamp(0, 1)  # a similar pair, where the cross term dominates
    ssim = pairwise_ssim(a, b, compile=compile)
    ref = torch.tensor([[structural_similarity(x.permute(1, 2, 0).double().numpy(), y.permute(1, 2, 0).double().numpy(),
                                               data_range=1, channel_axis=-1) for y in b] for x in a])
    assert (ssim.double() - ref).abs().max() < 1e-6 and ssim[0, 1] > 0.5


def test_ssim_falls_back_to_eager_when_compiling_fails(monkeypatch):
    from mindvis.evaluation import metrics

    def broken(fn, **kw):
        def run(*a):
            raise RuntimeError("no C++ compiler found\nmore")
        return run

    monkeypatch.setattr(metrics, "_compiled_ssim_rows", None)
    monkeypatch.setattr(torch, "compile", broken)
    a = torch.rand(2, 3, 16, 16)
    with pytest.warns(RuntimeWarning, match="compiled SSIM unavailable .RuntimeError: no C.. compiler found.; using"):
        out = pairwise_ssim(a, a, compile=True)
    assert torch.allclose(out, pairwise_ssim(a, a, compile=False)) and metrics._compiled_ssim_rows is False


def test_lpips_pairs_equal_the_lpips_package():
    import lpips

    from mindvis.evaluation.evaluate import lpips_features
    from mindvis.evaluation.metrics import pairwise_feature_distance

    # the package's learned channel weights on a random AlexNet (no download needed)
    model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    (feats, weights), _ = lpips_features(model)
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 3, 64, 64, generator=g), torch.rand(4, 3, 64, 64, generator=g)
    d = pairwise_feature_distance(feats(a), feats(b), weights)
    with torch.no_grad():
        assert abs(d[1, 2].item() - model(a[1:2] * 2 - 1, b[2:3] * 2 - 1).item()) < 1e-5
    report = evaluate(a[:, None], a, metrics=("lpips",), lpips_model=model)
    assert report["metrics"]["lpips_identification"]["mean"] == 1.0 and report["metrics"]["lpips"]["mean"] < 1e-6


def test_frechet_distance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 4, generator=g)
    assert frechet_distance(x, x) < 1e-6
    assert abs(frechet_distance(x, x + 1.0) - 4.0) < 1e-3  # mean shifted by 1 in 4 dimensions


def test_evaluate_rejects_bad_inputs():
    with pytest.raises(ValueError, match="image sizes differ"):
        evaluate(torch.rand(3, 2, 3, 16, 16), torch.rand(3, 3, 8, 8), metrics=("mse",))
    with pytest.raises(ValueError, match="3 sets of samples but 2"):
        evaluate(torch.rand(3, 2, 3, 8, 8), torch.rand(2, 3, 8, 8), metrics=("mse",))


def test_perfect_reconstructions_score_one():
    gt = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    report = evaluate(gt[:, None].repeat(1, 2, 1, 1, 1), gt, metrics=("mse", "pcc", "ssim", "lpips"))
    for m in ("mse", "pcc", "ssim"):
        assert report["metrics"][f"{m}_identification"]["mean"] == 1.0
    assert "lpips" in report["skipped"] or "lpips_identification" in report["metrics"]


@pytest.fixture(scope="module")
def finetuned(cache_dir, tiny_prior, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft")
    cfg = build_config(FinetuneConfig, preset_path("finetune", "synthetic"),
                       world_overrides(cache_dir) + TINY_FINETUNE + [f"model.prior={tiny_prior}", f"output_dir={out}",
                                                                     "train.epochs=2"])
    engine.finetune(cfg, run_name="run")
    return out / "run"


def test_sample_and_eval_commands_on_the_synthetic_world(finetuned, tmp_path):
    out = tmp_path / "samples"
    assert sample_main(["--model", str(finetuned), "--steps", "2", "--num-samples", "2", "--scheduler", "dpm++",
                        "--out", str(out)]) == 0
    with np.load(out / "samples.npz") as z:
        samples, truth = z["samples"], z["ground_truth"]
        meta = json.loads(str(z["meta"]))
    assert samples.shape[:2] == (4, 2) and samples.shape[2:] == truth.shape[1:] == (16, 16, 3)
    assert (out / "grid.png").is_file() and (out / "images" / "0003_s1.png").is_file()
    assert meta["synthetic_world"]["n_train_classes"] == 6
    assert eval_main(["--samples", str(out), "--n-way", "5", "--trials", "10"]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["settings"]["classifier"] == "synthetic"
    assert 0 <= report["metrics"]["5way_top1_acc"]["mean"] <= 1
    assert (out / "eval.md").read_text().startswith("# Reconstruction evaluation")
    assert eval_main(["--samples", str(out), "--n-way", "50"]) == 2  # more than the world's 10 classes
    # the same seed gives the same samples, whatever the batch size
    assert sample_main(["--model", str(finetuned), "--steps", "2", "--num-samples", "2", "--scheduler", "dpm++",
                        "--batch-size", "3", "--out", str(tmp_path / "again")]) == 0
    with np.load(tmp_path / "again" / "samples.npz") as z:  # equal up to float rounding of batched convolutions
        diff = np.abs(z["samples"].astype(int) - samples.astype(int))
        assert diff.max() <= 3 and diff.mean() < 0.05


def test_sample_from_an_fmri_file_and_bad_inputs(finetuned, tmp_path, capsys):
    voxels = json.loads((finetuned / "best" / "conditioner" / "config.json").read_text())["encoder"]["num_voxels"]
    np.save(tmp_path / "f.npy", np.random.default_rng(0).normal(size=(3, voxels)).astype(np.float32))
    assert sample_main(["--model", str(finetuned / "best"), "--fmri", str(tmp_path / "f.npy"), "--steps", "2",
                        "--num-samples", "1", "--scheduler", "ddim", "--out", str(tmp_path / "o")]) == 0
    with np.load(tmp_path / "o" / "samples.npz") as z:
        assert z["samples"].shape[:2] == (3, 1) and "ground_truth" not in z.files
    np.save(tmp_path / "bad.npy", np.zeros((2, voxels + 16), np.float32))
    assert sample_main(["--model", str(finetuned), "--fmri", str(tmp_path / "bad.npy"),
                        "--out", str(tmp_path / "new")]) == 2
    assert f"takes {voxels}" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(finetuned / "best", broken)
    shutil.rmtree(broken / "vae")
    assert sample_main(["--model", str(broken), "--out", str(tmp_path / "new")]) == 2
    assert "missing ['vae']" in capsys.readouterr().err


def test_linear_probe_reads_out_informative_features_and_not_noise():
    from mindvis.evaluation.probe import probe_identification

    rng = np.random.default_rng(0)
    images = {k: rng.normal(size=(n, 3, 4, 4)) for k, n in (("train", 200), ("val", 40), ("test", 40))}
    mixing = rng.normal(size=(48, 64))
    informative = {k: v.reshape(len(v), -1) @ mixing + 0.1 * rng.normal(size=(len(v), 64)) for k, v in images.items()}
    noise = {k: rng.normal(size=(len(v), 64)) for k, v in images.items()}
    good = probe_identification(informative, images)
    assert good["val_identification"] > 0.95 and good["test_identification"] > 0.95
    bad = probe_identification(noise, images)
    assert abs(bad["test_identification"] - 0.5) < 0.1
    with pytest.raises(ValueError, match="val: 40 feature rows but 39 targets"):
        probe_identification(informative, {**images, "val": images["val"][:39]})


@pytest.mark.parametrize("part", ["conditioner/model.safetensors", "unet/diffusion_pytorch_model.safetensors"])
def test_truncated_weights_in_a_model_folder_are_named(part, finetuned, tmp_path, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(finetuned / "best", model)
    data = (model / part).read_bytes()
    (model / part).write_bytes(data[: len(data) // 2])
    assert sample_main(["--model", str(model), "--steps", "2", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(model / part.split("/")[0]) in err and "Traceback" not in err and "\n" == err[-1] and err.count("\n") == 1


def test_convert_names_a_truncated_safetensors_file(tmp_path, capsys):
    from mindvis.commands import convert_main
    from mindvis.models.sc_mbm import MaskedBrainModel, mbm_config

    MaskedBrainModel(mbm_config("tiny", 64, embed_dim=32, depth=1, num_heads=2)).save_pretrained(tmp_path / "m")
    w = tmp_path / "m" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    assert convert_main(["to-original", str(tmp_path / "m"), str(tmp_path / "o.pth")]) == 2
    assert f"{w}: corrupt or truncated safetensors file" in capsys.readouterr().err


def _bad_fmri_files(folder):
    import h5py

    (folder / "text.npy").write_text("not an array\n")
    np.savez(folder / "good.npz", fmri=np.zeros((2, 8), np.float32))
    data = (folder / "good.npz").read_bytes()
    (folder / "truncated.npz").write_bytes(data[: len(data) // 2])
    (folder / "text.h5").write_text("not hdf5\n")
    np.save(folder / "strings.npy", np.array([["a", "b"], ["c", "d"]]))
    np.save(folder / "objects.npy", np.array([{"x": 1}, None], dtype=object), allow_pickle=True)
    np.save(folder / "empty.npy", np.zeros((0, 8), np.float32))
    with h5py.File(folder / "wrong.h5", "w") as f:
        f["betas"] = np.zeros((2, 8))
    return {"text.npy": "not a readable .npy file", "truncated.npz": "not a readable .npz file",
            "text.h5": "not a readable .h5 file", "strings.npy": "must be numbers", "objects.npy": "not a readable",
            "empty.npy": "no samples", "wrong.h5": "no dataset 'fmri'"}


def test_bad_fmri_files_are_one_line_errors(finetuned, tmp_path, capsys):
    for name, message in _bad_fmri_files(tmp_path).items():
        assert sample_main(["--model", str(finetuned), "--fmri", str(tmp_path / name), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert message in err and name in err and err.count("\n") == 1, (name, err)


def test_eval_refuses_bad_samples_files_in_one_line(finetuned, tmp_path, capsys):
    from mindvis.evaluation.cli import main as eval_main

    out = tmp_path / "s"
    assert sample_main(["--model", str(finetuned), "--steps", "2", "--num-samples", "1", "--scheduler", "dpm++",
                        "--out", str(out)]) == 0
    data = (out / "samples.npz").read_bytes()
    cases = {"text": b"not an npz\n", "truncated": data[: len(data) // 2]}
    with np.load(out / "samples.npz") as z:
        arrays = dict(z)
    meta = json.loads(str(arrays["meta"]))
    meta["synthetic_world"]["brightness"] = 3  # a setting the world does not have
    for name, content in cases.items():
        (tmp_path / f"{name}.npz").write_bytes(content)
    np.savez(tmp_path / "unknown.npz", **{**arrays, "meta": np.array(json.dumps(meta))})
    for name, message in (("text", "not a readable"), ("truncated", "not a readable"), ("unknown", "brightness")):
        assert eval_main(["--samples", str(tmp_path / f"{name}.npz")]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1, (name, err)


def test_vit_h_14_input_is_the_swag_weights_transform():
    from torchvision.models import ViT_H_14_Weights

    from mindvis.evaluation.classifiers import VIT_H_14_INPUT, ImageClassifier

    y, x = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    img = torch.stack([0.3 + 0.4 * x, 0.5 + 0.2 * torch.sin(3 * y), 0.2 + 0.5 * x * y])[None]  # smooth: no overshoot
    ours = ImageClassifier(torch.nn.Identity(), **VIT_H_14_INPUT).prepare(img)
    ref = ViT_H_14_Weights.IMAGENET1K_SWAG_E2E_V1.transforms()(img)
    assert ours.shape == ref.shape == (1, 3, 518, 518) and torch.allclose(ours, ref, atol=1e-4)
