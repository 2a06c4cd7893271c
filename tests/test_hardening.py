"""Issue 25, "nothing lost, nothing mixed, no traceback": every case of the issue and the test that covers it.

Each test here (and the disk-full test in tests/test_align.py) failed when run once against main at cd14223, whose code
has none of these fixes, and passes after. Two exceptions: the --roi-threshold test passed there already (the case-4
fix of mindvis-prep nsd made it right; kept as a regression test), and the good-state-dict test guards the new weight
check against refusing good files. The MEG cases are in tests/test_meeg_hardening.py (the MEG helper's module; names
there follow ``test_case_*``); NSD's case 4 is tested in tests/test_nsd.py.

| case | what | test |
|---|---|---|
| 1 | convert from-original-stage-b (and every convert, synth, sample, train-prior, demo, a run's --run-name) never replaces or mixes an existing output without --overwrite | test_case_1_convert_never_replaces_an_existing_folder, test_case_1_every_conversion_and_writer_refuses_an_existing_output, test_case_1_synth_refuses_a_world_of_other_settings, test_case_1_a_new_run_never_writes_into_an_earlier_run |
| 2 | --resume RUN with another decoder / settings: refused, naming the keys | test_case_2_resume_with_other_settings_is_refused |
| 3 | a failed --resume leaves config.yaml (and the run) as it was | test_case_3_a_failed_resume_changes_nothing |
| 4 | prep nsd rerun with other settings redoes the sessions | tests/test_nsd.py::test_a_rerun_with_other_settings_redoes_the_finished_sessions |
| 4 | prep things-meg rerun with other settings (--h-freq) | tests/test_meeg_hardening.py::test_case_* (MEG helper) |
| 5 | scaling checks cell settings before writing config.yaml | test_case_5_scaling_checks_cells_before_writing |
| 6 | NSD suite: float [0, 1] vs uint8 by dtype and range, NaN/Inf, negative ints refused | test_case_6_nsd_suite_reads_float_and_uint8_alike, test_case_6_bad_sample_values_are_refused_in_one_line |
| 7 | --nsd-weights NAME=FILE: text, wrong net, truncated, pickled code, unknown NAME fail the command | test_case_7_named_nsd_weights_load_or_fail, test_case_7_a_good_state_dict_passes_the_check |
| 8 | --windows 0.1:0, data.max_train=-5, unused keys, prep nsd gap | test_case_8_silently_accepted_align_settings_are_refused, test_case_8_prep_nsd_names_a_missing_session |
| 8 | mindvis-sample --steps 0 / --limit 0 | test_case_8_and_10_sample_argument_ranges |
| 8 | mindvis-stream --chunk 0/-1, --events without image_path | tests/test_meeg_hardening.py::test_case_* (MEG helper) |
| 9 | timm: targets and the NSD suite's default networks never download | test_case_9_timm_target_is_offline, test_case_9_nsd_suite_default_networks_are_offline, test_case_9_vit_h_14_is_offline |
| 10 | truncated betas .nii.gz, 3-D betas HDF5, --roi-threshold -1 resumed | test_case_10_bad_nsd_release_files_are_one_line, test_case_10_roi_threshold_change_on_a_resumed_preparation |
| 10 | --out a regular file (prep, align, scaling) | test_case_10_out_that_is_a_file |
| 10 | truncated FIF (prep, stream), events.tsv onset, stream --input text / --events without onset / ridge run | tests/test_meeg_hardening.py::test_case_* (MEG helper) |
| 10 | --embeddings of another dimension; samples 1-D or channel-first | test_case_10_embeddings_of_another_dimension, test_case_6_bad_sample_values_are_refused_in_one_line |
| 10 | data.pad_mode=bogus, decoder.folds=100000 | test_case_8_silently_accepted_align_settings_are_refused, test_case_10_ridge_folds_beyond_the_pairs |
| 10 | mindvis-sample --steps -3, --num-samples 0, --batch-size 0, --limit -1, --model a brain-module run | test_case_8_and_10_sample_argument_ranges, test_case_10_sample_refuses_a_brain_module_run |
| 10 | scaling: a cell JSON missing keys, a truncated one | test_case_10_scaling_cell_records_are_checked |
| 10 | disk full during --resume | tests/test_align.py::test_an_output_folder_that_cannot_be_written_is_one_clear_error |
| help | eval --seed, scaling key=value, prep nsd description, prep lists THINGS-MEG, ranges of --steps / --limit / --num-samples, no raw reStructuredText | test_help_texts, test_help_has_no_restructuredtext |
| help | ranges of mindvis-stream --chunk | tests/test_meeg_hardening.py::test_case_* (MEG helper) |
"""
import json
import pickle
import shutil
import socket

import numpy as np
import pytest
import torch

from mindvis.align.cli import main as align_main
from mindvis.commands import convert_main, synth_main
from mindvis.evaluation.cli import main as eval_main
from mindvis.pipelines.sample_cli import main as sample_main

from .conftest import FIXTURES, TINY_WORLD, world_overrides

TINY_ALIGN = ["train.batch_size=4", "train.epochs=2", "train.val_every=1", "train.checkpoint_every=1",
              "train.warmup_epochs=1", "decoder.hidden=16", "decoder.blocks=1", "decoder.projector_hidden=8",
              "decoder.folds=2", "eval.mindeye_subset=3", "eval.mindeye_draws=2", "eval.show=0"]


def one_error_line(err: str, prog: str) -> str:
    """The single ``prog: error:`` line of stderr (other lines are progress and log records), no traceback."""
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if f"{prog}: error:" in x]
    assert len(lines) == 1, err
    return lines[0]


def align_args(tmp_path, cache_dir, *extra):
    return ["--dataset", "synthetic", "--out", str(tmp_path), *world_overrides(cache_dir), *TINY_ALIGN, *extra]


@pytest.fixture
def fake_targets(monkeypatch):
    """Random target embeddings instead of the world's classifier (the engine up to the decoder, in a second)."""
    from mindvis.align import engine

    def embed(cfg, images):
        rng = np.random.default_rng(0)
        return {k: rng.normal(size=(len(v), 8)).astype(np.float32) for k, v in images.items()}

    monkeypatch.setattr(engine, "embed_images", embed)


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test (offline means no attempt, not a failed one)."""
    attempts = []

    def connect(self, address):
        attempts.append(address)
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


# ----------------------------------------------------------------------------------------------- case 1


def test_case_1_convert_never_replaces_an_existing_folder(tmp_path, monkeypatch, capsys):
    from mindvis.compat import ldm
    from mindvis.utils.io import atomic_dir

    calls = []

    def fake_convert(checkpoint, ldm_folder, out, *args):  # stands for a conversion that succeeds
        calls.append(out)
        return atomic_dir(out, lambda tmp: (tmp / "config.yaml").write_text("converted\n"))

    monkeypatch.setattr(ldm, "convert_original_stage_b", fake_convert)
    run = tmp_path / "align-run"
    run.mkdir()
    (run / "retrieval.json").write_text("{}")
    argv = ["from-original-stage-b", str(FIXTURES / "finetuned.pth"), str(run), "--ldm", str(FIXTURES / "ldm_label2img")]
    assert convert_main(argv) == 2
    line = one_error_line(capsys.readouterr().err, "mindvis-convert")
    assert str(run) in line and "--overwrite" in line and "retrieval.json" in line
    assert not calls and (run / "retrieval.json").read_text() == "{}"  # nothing converted, nothing touched
    assert convert_main(argv + ["--overwrite"]) == 0  # asked for: replaced once complete
    assert calls and sorted(p.name for p in run.iterdir()) == ["config.yaml"]


def test_case_1_every_conversion_and_writer_refuses_an_existing_output(tmp_path, capsys):
    from mindvis.finetune.prior import main as prior_main
    from mindvis.models.sc_mbm import MaskedBrainModel

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    encoder = str(FIXTURES / "fmri_encoder.pth")
    assert convert_main(["from-original", encoder, str(taken)]) == 2
    assert "--overwrite" in one_error_line(capsys.readouterr().err, "mindvis-convert")
    assert convert_main(["from-original", encoder, str(tmp_path / "model")]) == 0
    existing = tmp_path / "exported.pth"
    existing.write_bytes(b"old")
    assert convert_main(["to-original", str(tmp_path / "model"), str(existing)]) == 2
    assert "exists" in one_error_line(capsys.readouterr().err, "mindvis-convert") and existing.read_bytes() == b"old"
    assert convert_main(["to-original", str(tmp_path / "model"), str(existing), "--overwrite"]) == 0
    assert convert_main(["from-original", encoder, str(taken), "--overwrite"]) == 0  # replaced whole, not mixed
    assert not (taken / "keep.txt").exists() and MaskedBrainModel.from_pretrained(taken).config.num_voxels > 0
    (taken / "keep.txt").write_text("mine")
    # mindvis-sample and mindvis-train-prior: refused before any model is read or trained
    assert sample_main(["--model", str(tmp_path / "no-model"), "--out", str(taken)]) == 2
    assert "--overwrite" in one_error_line(capsys.readouterr().err, "mindvis-sample")
    assert prior_main(["--out", str(taken), "vq_epochs=1"]) == 2
    assert "--overwrite" in one_error_line(capsys.readouterr().err, "mindvis-train-prior")
    from mindvis.demo import main as demo_main

    assert demo_main(["--out", str(taken)]) == 2
    assert "--overwrite" in one_error_line(capsys.readouterr().err, "mindvis-demo")
    assert demo_main(["--out", str(taken), "--overwrite"]) == 2  # --overwrite removes a demo's outputs only
    assert "keep.txt" in one_error_line(capsys.readouterr().err, "mindvis-demo")
    assert (taken / "keep.txt").read_text() == "mine"


def test_case_1_synth_refuses_a_world_of_other_settings(tmp_path, capsys):
    world = [f"{k}={v}".replace(" ", "") for k, v in TINY_WORLD.items()]
    out = tmp_path / "world"
    assert synth_main(["--out", str(out), "--parts", "god", *world]) == 0
    made = json.loads((out / "GOD" / "meta.json").read_text())["fingerprint"]
    assert synth_main(["--out", str(out), "--parts", "god", *world]) == 0  # the same world: kept
    capsys.readouterr()
    assert synth_main(["--out", str(out), "--parts", "god", *world, "snr=0.5"]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "--overwrite" in err and "Traceback" not in err
    assert json.loads((out / "GOD" / "meta.json").read_text())["fingerprint"] == made
    assert synth_main(["--out", str(out), "--parts", "god", *world, "snr=0.5", "--overwrite"]) == 0
    assert json.loads((out / "GOD" / "meta.json").read_text())["config"]["snr"] == 0.5


def test_case_1_a_new_run_never_writes_into_an_earlier_run(tmp_path, cache_dir, tiny_world, capsys):
    earlier = tmp_path / "run"
    earlier.mkdir()
    (earlier / "config.yaml").write_text("decoder:\n  name: mlp\n")
    assert align_main(align_args(tmp_path, cache_dir, "--run-name", "run")) == 2
    line = one_error_line(capsys.readouterr().err, "mindvis-align")
    assert "earlier run" in line and "--resume" in line
    assert sorted(p.name for p in earlier.iterdir()) == ["config.yaml"]


# ----------------------------------------------------------------------------------------------- cases 2, 3


def saved_run(tmp_path, cache_dir, *extra):
    """A run folder with the config.yaml mindvis-align writes (and a comment a rewrite would lose), no checkpoint."""
    from mindvis.align.config import AlignConfig
    from mindvis.config import build_config, save_config
    from mindvis.configs import preset_path

    run = tmp_path / "run"
    cfg = build_config(AlignConfig, preset_path("align", "synthetic"),
                       ["data.dataset=synthetic", *world_overrides(cache_dir), *TINY_ALIGN, f"output_dir={tmp_path}",
                        *extra])
    save_config(cfg, run / "config.yaml")
    (run / "config.yaml").write_text("# the run's own settings\n" + (run / "config.yaml").read_text())
    return run


def test_case_2_resume_with_other_settings_is_refused(tmp_path, cache_dir, tiny_world, fake_targets, capsys):
    run = saved_run(tmp_path, cache_dir, "decoder.name=mlp")
    before = (run / "config.yaml").read_bytes()
    assert align_main(["--resume", str(run), "--decoder", "ridge"]) == 2
    line = one_error_line(capsys.readouterr().err, "mindvis-align")
    assert "decoder.name='ridge' (the run has 'mlp')" in line
    assert align_main(["--resume", str(run), "decoder.hidden=64", "train.lr=0.1"]) == 2
    line = one_error_line(capsys.readouterr().err, "mindvis-align")
    assert "decoder.hidden=64" in line and "train.lr=0.1" in line
    assert (run / "config.yaml").read_bytes() == before
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]  # no model/, retrieval.*, train.log


def test_case_3_a_failed_resume_changes_nothing(tmp_path, cache_dir, tiny_world, fake_targets, capsys):
    run = saved_run(tmp_path, cache_dir, "decoder.name=mlp")
    before = (run / "config.yaml").read_bytes()
    assert align_main(["--resume", str(run)]) == 2  # no checkpoint to resume from
    assert "no checkpoint" in one_error_line(capsys.readouterr().err, "mindvis-align")
    assert (run / "config.yaml").read_bytes() == before
    assert not any((run / d).exists() for d in ("model", "best", "retrieval.json", "test_embeddings.npz"))


# ----------------------------------------------------------------------------------------------- case 5


def scaling_args(cache_dir, out, *extra):
    world = [f"cell.data.synthetic.{k}={v}".replace(" ", "") for k, v in TINY_WORLD.items()]
    return ["--dataset", "synthetic", "--out", str(out), f"cell.data.cache_dir={cache_dir}", *world,
            "grid.trials=[4]", "grid.seeds=[0]", "grid.arms=[ridge]", "grid.bootstrap=10", "cell.decoder.folds=2",
            "cell.eval.show=0", *extra]


def test_case_5_scaling_checks_cells_before_writing(cache_dir, tmp_path, capsys):
    from mindvis.scaling.cli import main as scaling_main

    out = tmp_path / "study"
    for typo, key in (("cell.decoder.folds=1", "cell.decoder.folds"), ("cell.data.pad_mode=bogus", "cell.data.pad_mode"),
                      ("cell.data.zero_voxels=0.5", "cell.data.zero_voxels")):
        assert scaling_main(scaling_args(cache_dir, out, typo)) == 2
        assert key in one_error_line(capsys.readouterr().err, "mindvis-scaling")
        assert not (out / "config.yaml").exists()  # nothing locks the corrected rerun


def test_case_10_scaling_cell_records_are_checked(cache_dir, tmp_path, capsys):
    from mindvis.scaling.cli import main as scaling_main

    out = tmp_path / "study"
    args = scaling_args(cache_dir, out)
    assert scaling_main(args + ["--print-config"]) == 0
    out.mkdir()
    (out / "config.yaml").write_text(capsys.readouterr().out)
    cell = out / "cells" / "ridge-n4-s0.json"
    cell.parent.mkdir()
    for text, said in (('{"arm": "ridge", "te', "not a readable cell record"),
                       ('{"arm": "ridge", "seed": 0}', "not a finished cell record (no test, chance, averaging)")):
        cell.write_text(text)
        assert scaling_main(args) == 2
        line = one_error_line(capsys.readouterr().err, "mindvis-scaling")
        assert str(cell) in line and said in line and "delete it" in line


# ----------------------------------------------------------------------------------------------- cases 6, 7, 9


def gray_images(n, size, seed):
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 255, size=(n, size // 4, size // 4, 3))
    return np.kron(base, np.ones((1, 4, 4, 1))).round().astype(np.uint8)


def write_samples(folder, samples, truth):
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "samples.npz", samples=samples, ground_truth=truth, meta=np.array(json.dumps({})))
    return folder


@pytest.fixture
def no_networks(monkeypatch):
    """The suite without its networks (pixel metrics only), for tests about its inputs."""
    from mindvis.evaluation import nsd_suite

    skipped = {m: "not in this test" for m in nsd_suite.NSD_METRICS if m not in ("pixcorr", "ssim")}
    monkeypatch.setattr(nsd_suite, "load_networks", lambda weights, *a, **k: ({}, dict(skipped)))


def test_case_6_nsd_suite_reads_float_and_uint8_alike(tmp_path, no_networks):
    truth = gray_images(4, 32, 0)
    noisy = np.clip(truth.astype(int) + np.random.default_rng(1).integers(-60, 60, truth.shape), 0, 255).astype(np.uint8)
    scores = {}
    for name, s, t in (("uint8", noisy, truth), ("float", noisy / 255.0, truth / np.float32(255))):
        folder = write_samples(tmp_path / name, s[:, None], t)
        assert eval_main(["--samples", str(folder), "--suite", "nsd"]) == 0
        scores[name] = json.loads((folder / "nsd_eval.json").read_text())["metrics"]
    for m in ("ssim", "pixcorr"):
        assert scores["float"][m]["mean"] == pytest.approx(scores["uint8"][m]["mean"], abs=1e-4)
    assert scores["uint8"]["ssim"]["mean"] < 0.99  # the noise is seen: not divided by 255 twice


@pytest.mark.parametrize("samples,said", [
    (lambda t: np.where(np.arange(t.size).reshape(t.shape) == 5, np.nan, t / 255.0)[:, None], "NaN/Inf"),
    (lambda t: (t.astype(np.int16) - 5)[:, None], "int16 values from -5 to 250"),
    (lambda t: (t / 255.0 * 2)[:, None], "float images must be in [0, 1]"),
    (lambda t: np.moveaxis(t, -1, 1)[:, None], "channels first"),
    (lambda t: t.reshape(-1), "expected (N, K, H, W, 3)"),
    (lambda t: t[:, None].astype(bool), "an array of bool"),
])
def test_case_6_bad_sample_values_are_refused_in_one_line(samples, said, tmp_path, no_networks, capsys):
    truth = gray_images(4, 32, 0)
    truth[0, 0, 0], truth[0, 0, 1] = 255, 0
    folder = write_samples(tmp_path / "s", samples(truth), truth)
    assert eval_main(["--samples", str(folder), "--suite", "nsd"]) == 2
    line = one_error_line(capsys.readouterr().err, "mindvis-eval")
    assert str(folder / "samples.npz") in line and ": samples" in line and said in line
    assert not (folder / "nsd_eval.json").exists()


def test_case_10_embeddings_of_another_dimension(tmp_path, no_networks, capsys):
    truth = gray_images(4, 32, 0)
    folder = write_samples(tmp_path / "s", truth[:, None], truth)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "emb.npz", contrastive=rng.normal(size=(4, 8)), target=rng.normal(size=(4, 5)))
    assert eval_main(["--samples", str(folder), "--suite", "nsd", "--embeddings", str(tmp_path / "emb.npz")]) == 2
    line = one_error_line(capsys.readouterr().err, "mindvis-eval")
    assert "emb.npz" in line and "8 dimensions, target 5" in line


def test_case_7_named_nsd_weights_load_or_fail(tmp_path, capsys, monkeypatch):
    import os
    import torchvision.models as tvm

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    truth = gray_images(4, 32, 0)
    folder = write_samples(tmp_path / "s", truth[:, None], truth)
    text = tmp_path / "alexnet.pth"
    text.write_text("these are not weights\n")
    wrong = tmp_path / "resnet18.pth"
    torch.save(tvm.resnet18().state_dict(), wrong)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(wrong.read_bytes()[:5000])
    evil = tmp_path / "evil.pth"
    torch.save({"features.0.weight": os.system}, evil)
    cases = [("alexnet", text, "not a readable"), ("alexnet", wrong, "not a torchvision AlexNet state dict"),
             ("effnet", truncated, "truncated or not a readable"), ("swav", evil, "would run code"),
             ("alexnt", text, "unknown network 'alexnt'"), ("inception", tmp_path / "absent.pth", "no such file")]
    for name, file, said in cases:
        assert eval_main(["--samples", str(folder), "--suite", "nsd", "--nsd-weights", f"{name}={file}"]) == 2
        line = one_error_line(capsys.readouterr().err, "mindvis-eval")
        assert f"--nsd-weights {name}" in line and said in line, line
        assert "weights_only" not in line and "skipped" not in line
    assert not (folder / "nsd_eval.json").exists()


def sparse_safetensors(path, shapes: dict) -> None:
    """A safetensors file of zeros with these shapes, written sparse (its header is all that is read)."""
    header, offset = {}, 0
    for key, shape in shapes.items():
        size = int(np.prod(shape)) * 4
        header[key] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        f.truncate(8 + len(text) + offset)


def test_case_7_a_good_state_dict_passes_the_check(tmp_path):
    """Keys and shapes of a real torchvision AlexNet file (safetensors, read by its header only) and a SwAV file
    without its fc head pass; a named CLIP folder that does not load fails rather than being skipped."""
    import torchvision.models as tvm

    from mindvis.data.fmri import DataError
    from mindvis.evaluation.inputs import check_nsd_weights, named_weights_failed

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in tvm.alexnet().state_dict().items()}
    sparse_safetensors(tmp_path / "alex.safetensors", shapes)
    swav = {f"module.{k}": v for k, v in tvm.resnet18().state_dict().items() if not k.startswith("fc.")}
    torch.save(swav, tmp_path / "swav.pth")
    check_nsd_weights({"alexnet": str(tmp_path / "alex.safetensors")})
    with pytest.raises(DataError, match="not a SwAV ResNet-50"):  # a ResNet-18 is not a ResNet-50
        check_nsd_weights({"swav": str(tmp_path / "swav.pth")})
    with pytest.raises(DataError, match="--nsd-weights clip=/nowhere: CLIP weights unavailable"):
        named_weights_failed({"clip": "/nowhere"}, {"clip": "CLIP weights unavailable (OSError)"})


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Empty weight caches: torch.hub's (read from TORCH_HOME at each call) and the Hugging Face hub's."""
    from huggingface_hub import constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return tmp_path


def test_case_9_timm_target_is_offline(tmp_path, cache_dir, tiny_world, empty_caches, no_network, capsys):
    assert align_main(align_args(tmp_path, cache_dir, "--target", "timm:resnet18", "--run-name", "t")) == 2
    line = one_error_line(capsys.readouterr().err, "mindvis-align")
    assert "not on this machine" in line and "nothing is downloaded" in line and "--classifier-weights" not in line
    assert str(tmp_path / "hf") in line  # where to put the weights
    assert not no_network


def test_case_9_nsd_suite_default_networks_are_offline(tmp_path, empty_caches, no_network, capsys):
    truth = gray_images(3, 32, 0)
    folder = write_samples(tmp_path / "s", truth[:, None], truth)
    assert eval_main(["--samples", str(folder), "--suite", "nsd"]) == 0
    skipped = json.loads((folder / "nsd_eval.json").read_text())["skipped"]
    assert {"alexnet2", "inception", "effnet", "clip"} <= set(skipped) and "WeightsNotHere" in skipped["alexnet2"]
    err = capsys.readouterr().err
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    for name in ("alexnet", "inception", "effnet"):  # one line each: where the file goes, the flag that takes one
        (line,) = [x for x in err.splitlines() if f"--nsd-weights {name}=FILE" in x]
        assert line.startswith(f"mindvis-eval: warning: {checkpoints}/") and "nothing is downloaded" in line
    assert not no_network


def test_case_9_vit_h_14_is_offline(tmp_path, empty_caches, no_network):
    from mindvis.evaluation.classifiers import ClassifierUnavailable, vit_h_14

    with pytest.raises(ClassifierUnavailable, match="nothing is downloaded: put the file there or pass "
                                                    "--classifier-weights FILE") as e:
        vit_h_14()
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in str(e.value) and not no_network


# ----------------------------------------------------------------------------------------------- case 8, 10: align


@pytest.mark.parametrize("args,said", [
    (["--windows", "0.1:0"], "--windows takes LEN:STEP in seconds, both > 0"),
    (["data.max_train=-5"], "data.max_train=-5"),
    (["data.zero_voxels=1.5"], "data.zero_voxels=1.5 is not used by mindvis-align"),
    (["data.pad_mode=bogus"], "data.pad_mode='bogus'"),
])
def test_case_8_silently_accepted_align_settings_are_refused(args, said, tmp_path, cache_dir, capsys):
    assert align_main(align_args(tmp_path, cache_dir, *args)) == 2
    assert said in one_error_line(capsys.readouterr().err, "mindvis-align")
    assert not any(tmp_path.iterdir())  # refused before a run folder exists


def test_case_10_ridge_folds_beyond_the_pairs(tmp_path, cache_dir, tiny_world, fake_targets, capsys):
    assert align_main(align_args(tmp_path, cache_dir, "--decoder", "ridge", "decoder.folds=100000")) == 2
    assert "decoder.folds=100000 is not allowed: must be 2 to" in one_error_line(capsys.readouterr().err,
                                                                                 "mindvis-align")


def test_case_10_out_that_is_a_file(tmp_path, cache_dir, capsys):
    from mindvis.data_prep.cli import main as prep_main
    from mindvis.scaling.cli import main as scaling_main

    afile = tmp_path / "a-file"
    afile.write_text("x")
    assert align_main(align_args(afile, cache_dir)) == 2
    assert "is a file" in one_error_line(capsys.readouterr().err, "mindvis-align")
    assert scaling_main(scaling_args(cache_dir, afile)) == 2
    assert "is a file" in one_error_line(capsys.readouterr().err, "mindvis-scaling")
    assert prep_main(["nsd", "--root", str(tmp_path), "--subject", "1", "--out", str(afile)]) == 2
    assert "is a file" in one_error_line(capsys.readouterr().err, "mindvis-prep")
    assert afile.read_text() == "x"


# ----------------------------------------------------------------------------------------------- mindvis-sample


@pytest.mark.parametrize("flag,value", [("--steps", "0"), ("--steps", "-3"), ("--limit", "0"), ("--limit", "-1"),
                                        ("--num-samples", "0"), ("--batch-size", "0"), ("--steps", "two")])
def test_case_8_and_10_sample_argument_ranges(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        sample_main(["--model", str(tmp_path), "--out", str(tmp_path / "o"), flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: expected an integer >= 1, got" in err and "Traceback" not in err


def test_case_10_sample_refuses_a_brain_module_run(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    from mindvis.models.brain_module import BrainModule
    from mindvis.models.brain_module_config import BrainModuleConfig
    from mindvis.pipelines.embedding_pipeline import EmbeddingToImagePipeline

    generator = SimpleNamespace(image_size=16, conditioner=SimpleNamespace(config=SimpleNamespace(embed_dim=4)))
    monkeypatch.setattr(EmbeddingToImagePipeline, "from_pretrained", classmethod(lambda cls, path: generator))
    run = tmp_path / "meg-run"
    BrainModule(BrainModuleConfig(positions=[[0, 0], [1, 1]], n_times=8, dim=4, merger_channels=4,
                                  fourier_harmonics=2, hidden=4, depth=1, features=4)).save_pretrained(run / "model")
    assert sample_main(["--model", str(run), "--generator", str(tmp_path / "gen"), "--out", str(tmp_path / "o")]) == 2
    line = one_error_line(capsys.readouterr().err, "mindvis-sample")
    assert "BrainModule (an M/EEG decoder)" in line and str(run / "model") in line


# ----------------------------------------------------------------------------------------------- NSD preparation

NSD_WORLD = {**TINY_WORLD, "nsd_sessions": 3, "nsd_shared": 20, "nsd_volume": [8, 8, 8],
             "nsd_voxels": [20, 16, 12, 12, 8, 8, 8]}
BETAS = "nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR"


@pytest.fixture(scope="module")
def nsd_release(tmp_path_factory):
    from mindvis.world import SyntheticWorld, SyntheticWorldConfig

    root = tmp_path_factory.mktemp("nsd3") / "world"
    SyntheticWorld(SyntheticWorldConfig(**NSD_WORLD)).write(root, ["nsd"])
    return root / "NSD"


def release_copy(release, tmp_path):
    root = tmp_path / "release"
    shutil.copytree(release, root)
    return root


def test_case_8_prep_nsd_names_a_missing_session(nsd_release, tmp_path, caplog):
    from mindvis.data_prep.cli import main as prep_main

    root = release_copy(nsd_release, tmp_path)
    (root / BETAS / "betas_session02.nii.gz").unlink()
    assert prep_main(["nsd", "--root", str(root), "--subject", "1", "--out", str(tmp_path / "o"),
                      "--image-size", "16"]) == 0
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "session(s) 2 are missing" in warning and "preparing the 2 present (1,3)" in warning
    assert "--sessions" in warning


def test_case_10_bad_nsd_release_files_are_one_line(nsd_release, tmp_path, capsys):
    import h5py

    from mindvis.data_prep.cli import main as prep_main

    root = release_copy(nsd_release, tmp_path)
    nii = root / BETAS / "betas_session02.nii.gz"
    nii.write_bytes(nii.read_bytes()[:3000])
    argv = ["nsd", "--root", str(root), "--subject", "1", "--image-size", "16"]
    assert prep_main(argv + ["--out", str(tmp_path / "a")]) == 2
    line = one_error_line(capsys.readouterr().err, "mindvis-prep")
    assert str(nii) in line and "truncated or corrupt NIfTI data (EOFError" in line
    nii.unlink()
    with h5py.File(root / BETAS / "betas_session02.hdf5", "w") as f:
        f["betas"] = np.zeros((750, 8, 8), np.int16)
    assert prep_main(argv + ["--out", str(tmp_path / "b")]) == 2
    line = one_error_line(capsys.readouterr().err, "mindvis-prep")
    assert "betas_session02.hdf5" in line and "shape (750, 8, 8); NSD betas are 4-D" in line


def test_case_10_roi_threshold_change_on_a_resumed_preparation(nsd_release, tmp_path, monkeypatch, capsys):
    """Already right before this module (the case-4 fix): the finished sessions are prepared again."""
    from mindvis.data_prep import nsd as prep
    from mindvis.data_prep.cli import main as prep_main

    real, calls = prep.read_session, []

    def dies_after_one(*a, **k):
        if calls:
            raise KeyboardInterrupt
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(prep, "read_session", dies_after_one)
    argv = ["nsd", "--root", str(nsd_release), "--subject", "1", "--image-size", "16", "--out", str(tmp_path / "o")]
    with pytest.raises(KeyboardInterrupt):
        prep_main(argv)
    monkeypatch.setattr(prep, "read_session", real)
    assert prep_main(argv + ["--roi-threshold", "-1"]) == 0
    meta = json.loads((tmp_path / "o" / "meta.json").read_text())
    assert meta["settings"]["roi_threshold"] == -1 and {s["roi_threshold"] for s in meta["items"].values()} == {-1}


# ----------------------------------------------------------------------------------------------- --help


def help_text(main, *argv) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([*argv, "--help"])
    return out.getvalue()


def test_help_texts():
    from mindvis.data_prep.cli import main as prep_main
    from mindvis.scaling.cli import main as scaling_main

    assert "--seed SEED seed of the random draws" in " ".join(help_text(eval_main).split())
    assert "key=value study settings: grid.*" in " ".join(help_text(scaling_main).split())
    assert "One NSD subject from the release layout" in help_text(prep_main, "nsd")
    assert "THINGS-MEG" in help_text(prep_main).split("positional arguments")[0]
    text = " ".join(help_text(sample_main).split())
    for flag in ("--steps STEPS denoising steps, >= 1", "--num-samples NUM_SAMPLES images per fMRI, >= 1",
                 "--limit N decode only the first N fMRI samples, N >= 1", "--batch-size BATCH_SIZE images denoised "
                                                                             "at once, >= 1"):
        assert flag in text, flag


def console_scripts() -> dict:
    import configparser
    import importlib
    from pathlib import Path

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).parents[1] / "setup.cfg")
    out = {}
    for line in cfg["options.entry_points"]["console_scripts"].strip().splitlines():
        name, target = (x.strip() for x in line.split("="))
        module, func = target.split(":")
        out[name] = getattr(importlib.import_module(module), func)
    return out


def test_help_has_no_restructuredtext():
    subcommands = {"mindvis-prep": ["hcp", "god", "bold5000", "nsd", "things-meg"],
                   "mindvis-convert": ["from-original", "to-original", "from-original-stage-b", "from-brainmagick"]}
    for name, main in console_scripts().items():
        for sub in [None, *subcommands.get(name, [])]:
            text = help_text(main, *([sub] if sub else []))
            for markup in ("``", ":func:", ":class:", ":mod:", ":data:", ":meth:", "`"):
                assert markup not in text, f"{name} {sub or ''} --help shows {markup!r}"
    from mindvis.utils.cli import plain

    assert plain("see :func:`mindvis.data.meeg.preprocess_window` and :class:`~a.b.Thing`, ``x=1`` or `y`") == \
        "see mindvis.data.meeg.preprocess_window and Thing, x=1 or y"
