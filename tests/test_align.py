"""``mindvis-align`` on the tiny synthetic world: every decoder end to end, reload, resume, bad input."""
import json

import numpy as np
import pytest
import torch

from mindvis.align.cli import main
from mindvis.align.decoders import decode, load_decoder

from .conftest import FIXTURES, world_overrides

TINY_ALIGN = ["train.batch_size=4", "train.epochs=4", "train.val_every=2", "train.checkpoint_every=2",
              "train.warmup_epochs=1", "decoder.hidden=32", "decoder.blocks=1", "decoder.projector_hidden=16",
              "decoder.folds=3", "eval.mindeye_subset=3", "eval.mindeye_draws=2", "eval.show=2"]


def run(tmp_path, cache_dir, name, *extra):
    rc = main(["--dataset", "synthetic", "--out", str(tmp_path), "--run-name", name, *world_overrides(cache_dir),
               *TINY_ALIGN, *extra])
    return rc, tmp_path / name


@pytest.mark.parametrize("decoder", ["ridge", "mlp", "mbm"])
def test_align_runs_end_to_end_and_reloads(decoder, tmp_path, cache_dir, tiny_world):
    rc, run_dir = run(tmp_path, cache_dir, decoder, "--decoder", decoder)
    assert rc == 0
    report = json.loads((run_dir / "retrieval.json").read_text())
    test = report["test"]
    assert report["test_items"] == 4 and test["top1_brain_to_image"]["chance"] == 0.25
    assert 0 <= test["top1_brain_to_image"]["value"] <= test["top5_brain_to_image"]["value"] <= 1
    assert [r["repetitions"] for r in report["averaging"]] == [1, 2]  # the tiny world shows each test image twice
    for png in ("retrieval_top5.png", "gallery_top5.png", "averaging.png"):
        assert (run_dir / png).stat().st_size > 0
    assert "| top1_brain_to_image |" in (run_dir / "retrieval.md").read_text()
    # the saved decoder reproduces the decoded test embeddings
    saved = np.load(run_dir / "test_embeddings.npz")
    model = load_decoder(run_dir / ("model" if decoder == "ridge" else "best"))
    from mindvis.finetune.data import build_stage_b_data
    from mindvis.config import build_config
    from mindvis.align.config import AlignConfig
    from mindvis.align.data import split_test_trials

    cfg = build_config(AlignConfig, run_dir / "config.yaml")
    avg, trials = split_test_trials(build_stage_b_data(cfg.data, 16, cfg.train.seed).test)
    assert trials.shape[:2] == (4, 2)
    assert np.allclose(decode(model, avg.fmri)["contrastive"], saved["contrastive"], atol=1e-5)
    if decoder != "ridge":
        hist = report["history"]
        assert len(hist) == 4 and report["selected_epoch"] in (2, 4)


def test_resume_repeats_the_uninterrupted_run(tmp_path, cache_dir, tiny_world):
    import shutil

    _, full = run(tmp_path, cache_dir, "full", "--decoder", "mlp")
    rc, part = run(tmp_path, cache_dir, "part", "--decoder", "mlp")
    assert rc == 0
    # as if killed after epoch 2: the later checkpoint and the final outputs never written
    shutil.rmtree(part / "checkpoints" / "epoch-0004")
    (part / "checkpoints" / "latest").write_text("epoch-0002\n")
    (part / "retrieval.json").unlink()
    assert main(["--resume", str(part)]) == 0
    a = json.loads((full / "retrieval.json").read_text())
    b = json.loads((part / "retrieval.json").read_text())
    assert [h["loss"] for h in a["history"]] == pytest.approx([h["loss"] for h in b["history"]], rel=1e-6)
    assert a["test"]["top1_brain_to_image"] == b["test"]["top1_brain_to_image"]


@pytest.mark.parametrize("source", ["mindvis", "original"])
def test_mbm_with_a_stage_a_encoder_and_frozen(source, tmp_path, cache_dir, tiny_world):
    from mindvis.compat.original import load_original_mbm
    from mindvis.models.sc_mbm import MaskedBrainModel, mbm_config

    if source == "mindvis":
        mbm = MaskedBrainModel(mbm_config("tiny", 64, embed_dim=32, depth=1, num_heads=2))
        mbm.save_pretrained(tmp_path / "stage_a")
        encoder = tmp_path / "stage_a"
    else:  # the original release's fmri_encoder.pth (208 voxels; positions interpolated to the world's 176)
        encoder = FIXTURES / "fmri_encoder.pth"
        mbm, _ = load_original_mbm(encoder)
    rc, run_dir = run(tmp_path, cache_dir, "frozen", "--decoder", "mbm", "--encoder", str(encoder),
                      "decoder.freeze_encoder=true")
    assert rc == 0
    dec = load_decoder(run_dir / "model")
    assert torch.equal(dec.encoder.blocks[0].attn.qkv.weight, mbm.blocks[0].attn.qkv.weight)  # never updated


@pytest.mark.parametrize("args,message", [
    (["train.epochs=0"], "train.epochs=0"),
    (["loss.contrastive=triplet"], "loss.contrastive"),
    (["train.batch_size=1"], "train.batch_size"),
    (["decoder.alphas=[0.0,1.0]"], "decoder.alphas"),
    (["--target", "clip:/nonexistent/clip-folder"], "not on this machine"),
    (["--target", "resnet"], "unknown target space"),
    (["decoder.nope=1"], "nope"),
])
def test_bad_settings_are_one_line_errors(args, message, tmp_path, cache_dir, tiny_world, capsys):
    rc, _ = run(tmp_path, cache_dir, "bad", *args)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err


def test_real_dataset_preset_needs_a_target(tmp_path, capsys):
    rc = main(["--dataset", "god", "--data-path", str(tmp_path), "--out", str(tmp_path)])
    assert rc == 2 and "target" in capsys.readouterr().err


def test_target_and_fmri_counts_must_agree():
    from mindvis.models.ridge import RidgeDecoder

    with pytest.raises(ValueError, match="same N"):
        RidgeDecoder.fit(np.zeros((10, 4)), np.zeros((9, 2)))


def test_nan_fmri_is_refused(tmp_path, cache_dir, tiny_world, capsys):
    from mindvis.world import SyntheticWorldConfig

    from .conftest import TINY_WORLD

    cfg = SyntheticWorldConfig(**TINY_WORLD)
    path = cache_dir / "synthetic" / cfg.fingerprint() / "GOD" / "sbj_1.npz"
    backup = path.read_bytes()
    try:
        with np.load(path) as z:
            arrays = dict(z)
        arrays["arr_0"] = arrays["arr_0"].copy()
        arrays["arr_0"][0] = np.nan
        np.savez(path, **arrays)
        rc, _ = run(tmp_path, cache_dir, "nan", "--decoder", "ridge")
        assert rc == 2 and "NaN" in capsys.readouterr().err
    finally:
        path.write_bytes(backup)


@pytest.fixture(scope="module")
def embedding_prior(tmp_path_factory, tiny_world):
    """A generator conditioned on the synthetic target space, one epoch of each part on the tiny world (16 px)."""
    from mindvis.world import SyntheticWorldConfig
    from mindvis.finetune.config import PriorConfig
    from mindvis.finetune.prior import train_prior

    from .conftest import TINY_WORLD

    cfg = PriorConfig(image_size=16, images_per_class=2, vq_channels=[32, 32, 32], unet_channels=[32, 32],
                      context_dim=32, vq_epochs=1, ldm_epochs=1, batch_size=8, condition="embedding",
                      target="synthetic", synthetic=SyntheticWorldConfig(**TINY_WORLD))
    return train_prior(cfg, tmp_path_factory.mktemp("gen") / "gen")


def test_generation_from_decoded_embeddings_is_scored(tmp_path, cache_dir, embedding_prior, capsys):
    from mindvis.evaluation.cli import main as eval_main
    from mindvis.pipelines.embedding_pipeline import EmbeddingToImagePipeline
    from mindvis.pipelines.sample_cli import main as sample_main

    rc, run_dir = run(tmp_path, cache_dir, "gen-ridge", "--decoder", "ridge")
    assert rc == 0
    out = tmp_path / "samples"
    assert sample_main(["--model", str(run_dir), "--generator", str(embedding_prior), "--scheduler", "dpm++",
                        "--steps", "2", "--num-samples", "2", "--out", str(out)]) == 0
    with np.load(out / "samples.npz") as z:
        assert z["samples"].shape == (4, 2, 16, 16, 3) and z["ground_truth"].shape == (4, 16, 16, 3)
        assert json.loads(str(z["meta"]))["generator"] == str(embedding_prior)
    assert eval_main(["--samples", str(out), "--n-way", "4", "--metrics", "nway", "pcc"]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert "pcc_identification" in json.dumps(report)
    # the generator depends on the embedding it is given
    pipe = EmbeddingToImagePipeline.from_pretrained(embedding_prior)
    e = torch.randn(2, pipe.conditioner.config.embed_dim)
    a = pipe(e, num_inference_steps=2, scheduler="dpm++")
    assert a.shape == (2, 1, 3, 16, 16) and not torch.allclose(a[0], a[1])
    # an embedding that does not fit the generator is a clear error
    with pytest.raises(ValueError, match="expected embeddings"):
        pipe(torch.randn(2, 5), num_inference_steps=2, scheduler="dpm++")
    # a decoder whose space differs from the generator's: one-line error, exit 2
    import shutil

    from mindvis.models.embedding_conditioner import EmbeddingConditioner, EmbeddingConditionerConfig

    other = tmp_path / "other-generator"
    shutil.copytree(embedding_prior, other)
    shutil.rmtree(other / "embedding_conditioner")
    EmbeddingConditioner(EmbeddingConditionerConfig(7, 32, "clip:x")).save_pretrained(other / "embedding_conditioner")
    capsys.readouterr()
    assert sample_main(["--model", str(run_dir), "--generator", str(other), "--steps", "2",
                        "--out", str(tmp_path / "bad")]) == 2
    assert "takes 7" in capsys.readouterr().err


def test_resume_removes_what_a_killed_checkpoint_write_left(tmp_path, cache_dir, tiny_world):
    rc, run_dir = run(tmp_path, cache_dir, "stale", "--decoder", "mlp")
    assert rc == 0
    leftovers = [run_dir / "checkpoints" / ".epoch-0006.k3j2.tmp", run_dir / ".best.x1y2.tmp",
                 run_dir / "checkpoints" / ".latest.q9.tmp"]
    leftovers[0].mkdir()
    (leftovers[0] / "model.safetensors").write_bytes(b"half")
    leftovers[1].mkdir()
    leftovers[2].write_text("epoch-0006\n")
    assert main(["--resume", str(run_dir)]) == 0
    assert not any(p.exists() for p in leftovers)
    assert (run_dir / "checkpoints" / "epoch-0004").is_dir()  # finished checkpoints stay
    assert "removed 3 unfinished temporary file(s)" in (run_dir / "train.log").read_text()


def test_a_failure_after_the_run_started_reaches_its_log(tmp_path, cache_dir, tiny_world, capsys):
    rc, run_dir = run(tmp_path, cache_dir, "fails", "--target", "clip:/nonexistent/clip-folder")
    assert rc == 2
    assert "not on this machine" in capsys.readouterr().err
    assert "ERROR mindvis-align: error:" in (run_dir / "train.log").read_text()


def test_resume_skips_a_damaged_newest_checkpoint(tmp_path, cache_dir, tiny_world, capsys):
    _, full = run(tmp_path, cache_dir, "intact", "--decoder", "mlp")
    rc, part = run(tmp_path, cache_dir, "damaged", "--decoder", "mlp")
    weights = part / "checkpoints" / "epoch-0004" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])  # as a full disk would leave it
    (part / "retrieval.json").unlink()
    assert main(["--resume", str(part)]) == 0
    log = (part / "train.log").read_text()
    assert "epoch-0004 is damaged and skipped" in log and "resumed from" in log and "epoch-0002" in log
    a = json.loads((full / "retrieval.json").read_text())["history"]
    b = json.loads((part / "retrieval.json").read_text())["history"]
    assert [h["loss"] for h in a] == pytest.approx([h["loss"] for h in b], rel=1e-6)  # epochs 3-4 trained again
    state = part / "checkpoints" / "epoch-0002" / "training_state.pt"
    state.write_bytes(b"")
    for w in part.glob("checkpoints/epoch-*/model/model.safetensors"):
        w.write_bytes(b"")
    capsys.readouterr()
    assert main(["--resume", str(part)]) == 2
    assert "has no intact checkpoint to resume from" in capsys.readouterr().err


def test_an_output_folder_that_cannot_be_written_is_one_clear_error(tmp_path, cache_dir, tiny_world, capsys,
                                                                     monkeypatch):
    """A disk that fills up during --resume: one line for every way a writer reports it (Python's OSError,
    safetensors' and torch.save's own errors), and the checkpoints written before stay intact."""
    import errno
    import shutil

    from mindvis import training

    rc, run_dir = run(tmp_path, cache_dir, "full-disk", "--decoder", "mlp")
    assert rc == 0
    shutil.rmtree(run_dir / "checkpoints" / "epoch-0004")  # as if killed after epoch 2
    (run_dir / "checkpoints" / "latest").write_text("epoch-0002\n")
    real = training.atomic_dir
    failures = [OSError(errno.ENOSPC, "No space left on device", str(run_dir / "checkpoints")),
                type("SafetensorError", (Exception,), {})(
                    "Error while serializing: I/O error: No space left on device (os error 28)"),
                RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")]
    for failure in failures:
        def full_disk(path, fill, failure=failure):  # the disk fills up at the next checkpoint
            raise failure

        monkeypatch.setattr(training, "atomic_dir", full_disk)
        capsys.readouterr()
        rc = main(["--resume", str(run_dir)])
        err = capsys.readouterr().err
        assert rc == 2 and "cannot write to" in err and "Traceback" not in err, err
        (line,) = [x for x in err.splitlines() if "error:" in x]
        assert "checkpoints written before stay intact" in line, err
        assert "No space left on device" in err or "inline_container" in err
        assert "Logging error" not in err
    monkeypatch.setattr(training, "atomic_dir", real)
    assert (run_dir / "checkpoints" / "epoch-0002" / "model" / "model.safetensors").is_file()  # earlier one intact
    assert main(["--resume", str(run_dir)]) == 0  # and the run continues from it once there is room
