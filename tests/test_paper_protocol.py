"""The release-to-Table-1 path: a released stage-B checkpoint converted by `mindvis-convert from-original-stage-b`,
sampled on the dataset settings it was trained with, and scored by `mindvis-eval --protocol paper`."""
import json

import numpy as np
import pytest
import torch

from mindvis.commands import convert_main, synth_main
from mindvis.evaluation.cli import main as eval_main
from mindvis.models.dc_ldm import DCLDM
from mindvis.pipelines.sample_cli import main as sample_main

from .conftest import FIXTURES, TINY_WORLD

# the fixture's encoder takes 208 voxels: the original pads a 200-voxel VC by one more patch of 16 (pad_mode original)
GOD_WORLD = {**TINY_WORLD, "god_subjects": 3, "god_voxels": [40, 40, 30, 30, 20, 20, 20]}


def world(tmp_path, **changes) -> str:
    settings = {**GOD_WORLD, **changes}
    root = tmp_path / f"world{len(changes)}"
    assert synth_main(["--out", str(root), "--parts", "god"] +
                      [f"{k}={v}".replace(" ", "") for k, v in settings.items()]) == 0
    return str(root / "GOD")


def convert(out, data_path) -> int:
    return convert_main(["from-original-stage-b", str(FIXTURES / "finetuned.pth"), str(out), "--ldm",
                         str(FIXTURES / "ldm_label2img"), "--encoder", str(FIXTURES / "fmri_encoder.pth"),
                         "--data-path", data_path])


@pytest.fixture(scope="module")
def release_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("release")
    assert convert(tmp / "run", world(tmp)) == 0
    return tmp / "run"


def test_converted_folder_computes_the_original_outputs_with_its_training_settings(release_run, reference):
    import yaml

    model = DCLDM.from_pretrained(release_run / "model")
    with torch.no_grad():
        cond = model.conditioner(torch.from_numpy(reference["ldm_fmri"]))
    np.testing.assert_allclose(cond.numpy(), reference["ldm_cond"], rtol=1e-5, atol=1e-5)
    cfg = yaml.safe_load((release_run / "config.yaml").read_text())
    # the checkpoint's own settings: GOD subject 3, VC, the original's padding, 32 px, its seed and rate
    assert cfg["data"] | {"path": None} == cfg["data"] | {"dataset": "god", "subjects": ["sbj_3"], "roi": "VC",
                                                          "pad_mode": "original", "image_size": 32, "path": None}
    assert (cfg["train"]["seed"], cfg["train"]["lr"], cfg["model"]["time_cond"]) == (2022, 5.3e-05, True)
    original = json.loads((release_run / "original_config.json").read_text())
    assert original["config"]["kam_subs"] == ["sbj_3"] and original["source"]["checkpoint"].endswith("finetuned.pth")


def test_release_to_paper_protocol(release_run, tmp_path, monkeypatch):
    import torchvision.models

    def no_weights(*a, **k):
        raise RuntimeError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached classifier weights
    monkeypatch.setattr(torchvision.models, "vit_h_14", no_weights)
    out = tmp_path / "samples"
    assert sample_main(["--model", str(release_run), "--split", "test", "--scheduler", "plms", "--steps", "250",
                        "--num-samples", "5", "--precision", "fp32", "--limit", "3", "--batch-size", "15",
                        "--out", str(out)]) == 0
    assert eval_main(["--samples", str(out), "--protocol", "paper"]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["protocol"] == {"name": "paper", "deviations": []}
    assert "ViT-H/14" in report["skipped"]["nway"]  # the classifier is reported skipped; the rest runs
    assert {"mse_identification", "pcc_identification", "ssim_identification"} <= set(report["metrics"])
    assert "fid" not in report["metrics"] and "fid" not in report["skipped"]  # not part of the paper's protocol
    assert "Protocol: paper (followed exactly)" in (out / "eval.md").read_text()
    # a departure from the protocol is named in the report
    assert eval_main(["--samples", str(out), "--protocol", "paper", "--trials", "10", "--out",
                      str(tmp_path / "e2")]) == 0
    assert json.loads((tmp_path / "e2" / "eval.json").read_text())["protocol"]["deviations"] == [
        "trials=10 (protocol: 50)"]


def test_protocol_names_sampling_that_departs_from_the_paper(release_run, tmp_path):
    out = tmp_path / "fast"
    assert sample_main(["--model", str(release_run), "--num-samples", "2", "--limit", "2", "--out", str(out)]) == 0
    assert eval_main(["--samples", str(out), "--protocol", "paper", "--metrics", "pcc"]) == 0
    deviations = json.loads((out / "eval.json").read_text())["protocol"]["deviations"]
    assert deviations[:3] == ["sampling num_samples=2 (protocol: 5)", "sampling scheduler='unipc' (protocol: 'plms')",
                              "sampling steps=8 (protocol: 250)"]
    assert deviations[-1] == "metrics=['pcc'] (protocol: ['nway', 'mse', 'pcc', 'ssim', 'lpips'])"


def test_conversion_errors_are_one_line(tmp_path, capsys):
    assert convert_main(["from-original-stage-b", str(FIXTURES / "fmri_encoder.pth"), str(tmp_path / "x"), "--ldm",
                         str(FIXTURES / "ldm_label2img")]) == 2
    assert "not a MinD-Vis stage-B checkpoint" in capsys.readouterr().err and not (tmp_path / "x").exists()
    # data whose ROI does not give the model's voxel count: named, not a shape error deep in the encoder
    assert convert(tmp_path / "run", world(tmp_path, god_voxels=[40, 40, 30, 30, 20, 20, 40])) == 0
    assert sample_main(["--model", str(tmp_path / "run"), "--limit", "1", "--out", str(tmp_path / "s")]) == 2
    assert "224 voxels, the model takes 208" in capsys.readouterr().err
