"""mindvis-scaling on the tiny world: the grid runs and resumes without redoing cells; fits and gaps are right."""
import json

import numpy as np
import pytest

from mindvis.scaling import engine
from mindvis.scaling.analysis import analyse, fit_log_linear
from mindvis.scaling.cli import main

from .conftest import TINY_WORLD


def tiny_args(cache_dir, out, *extra):
    world = [f"cell.data.synthetic.{k}={v}".replace(" ", "") for k, v in TINY_WORLD.items()]
    return ["--dataset", "synthetic", "--out", str(out), f"cell.data.cache_dir={cache_dir}", *world,
            "grid.fractions=[0.5,1.0]", "grid.seeds=[0,1]", "grid.arms=[ridge,mlp]", "grid.bootstrap=200",
            "cell.train.epochs=2", "cell.train.val_every=1", "cell.decoder.hidden=32", "cell.decoder.blocks=1",
            "cell.decoder.projector_hidden=32", "cell.decoder.folds=2", "grid.subjects=[]", *extra]


def test_log_linear_fit_and_bootstrap_interval():
    n = np.array([10, 100, 1000] * 3, dtype=float)
    seeds = np.repeat([0, 1, 2], 3)
    fit = fit_log_linear(n, 0.1 + 0.2 * np.log10(n), seeds, 100, np.random.default_rng(0))
    assert fit["slope"] == pytest.approx(0.2) and fit["intercept"] == pytest.approx(0.1)
    assert fit["r2"] == pytest.approx(1.0) and fit["slope_ci"] == pytest.approx([0.2, 0.2])
    noisy = 0.1 + 0.2 * np.log10(n) + np.array([0.05, -0.05, 0.0, -0.05, 0.05, 0.0, 0.0, 0.02, -0.02])
    fit = fit_log_linear(n, noisy, seeds, 500, np.random.default_rng(0))
    assert fit["r2"] < 1 and fit["slope_ci"][0] < fit["slope"] < fit["slope_ci"][1]


def test_gaps_are_paired_by_seed():
    def cell(arm, seed, top1):
        return {"arm": arm, "size": "f1", "n_train": 100, "seed": seed, "averaging": [],
                "test": {"top1": top1, "top5": 0, "median_rank": 0, "correlation": 0},
                "chance": {"top1": 0.02, "top5": 0.1, "median_rank": 0.5, "correlation": 0}}

    a = analyse([cell("ridge", 0, 0.3), cell("ridge", 1, 0.5), cell("mlp", 0, 0.4), cell("mlp", 1, 0.5)], 0)
    (gap,) = a["gaps"]["mlp - ridge"]
    assert gap["top1_gap"] == pytest.approx(0.05) and gap["std"] == pytest.approx(0.05) and gap["seeds"] == 2
    assert a["arms"]["ridge"]["curve"][0]["top1"] == {"mean": 0.4, "std": pytest.approx(0.1), "chance": 0.02}


def test_grid_runs_and_an_interrupted_study_resumes(cache_dir, tmp_path, monkeypatch):
    real, calls = engine.run_cell, []

    def dies_after_three(*a, **k):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(a[1:5])
        return real(*a, **k)

    monkeypatch.setattr(engine, "run_cell", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        main(tiny_args(cache_dir, tmp_path / "study"))
    first = {p.name: p.read_bytes() for p in (tmp_path / "study" / "cells").glob("*.json")}
    assert len(first) == 3
    calls.clear()
    monkeypatch.setattr(engine, "run_cell", lambda *a, **k: (calls.append(a[1:5]), real(*a, **k))[1])
    assert main(tiny_args(cache_dir, tmp_path / "study")) == 0
    assert len(calls) == 5  # 2 arms x 2 sizes x 2 seeds = 8 cells; 3 were done
    for name, data in first.items():
        assert (tmp_path / "study" / "cells" / name).read_bytes() == data
    report = json.loads((tmp_path / "study" / "scaling.json").read_text())
    assert len(report["cells"]) == 8 and set(report["analysis"]["arms"]) == {"ridge", "mlp"}
    sizes = [r["n_train"] for r in report["analysis"]["arms"]["ridge"]["curve"]]
    assert sizes[0] < sizes[1] and report["analysis"]["arms"]["ridge"]["fits"]["top1"]["slope"] is not None
    assert report["analysis"]["arms"]["mlp"]["averaging"][0]["repetitions"] == 1
    for f in ("scaling.md", "scaling.png", "averaging.png", "config.yaml"):
        assert (tmp_path / "study" / f).is_file(), f
    assert (tmp_path / "study" / "runs" / "ridge-f0.5-s0" / "retrieval.json").is_file()
    assert "mlp - ridge" in report["analysis"]["gaps"]


def test_training_subsets_are_nested(cache_dir):
    from mindvis.config import build_config
    from mindvis.finetune.config import DataConfig
    from mindvis.finetune.data import build_stage_b_data

    world = [f"synthetic.{k}={v}".replace(" ", "") for k, v in TINY_WORLD.items()]
    ids = {}
    for n in (3, 6, 0):
        cfg = build_config(DataConfig, overrides=["dataset=synthetic", f"cache_dir={cache_dir}", f"max_train={n}",
                                                  *world])
        ids[n] = build_stage_b_data(cfg, 16, seed=1).train.ids
    assert len(ids[3]) == 3 and len(ids[6]) == 6 and set(ids[3]) < set(ids[6]) < set(ids[0])


def test_settings_are_checked(cache_dir, tmp_path, capsys):
    assert main(tiny_args(cache_dir, tmp_path / "s", "grid.arms=[mbm-rest]")) == 2
    assert "grid.rest_encoder" in capsys.readouterr().err
    assert main(tiny_args(cache_dir, tmp_path / "s", "grid.fractions=[1.5]")) == 2
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "config.yaml").write_text("grid:\n  seeds: [7]\n")
    assert main(tiny_args(cache_dir, tmp_path / "t")) == 2
    assert "holds a study with other settings" in capsys.readouterr().err


def test_subjects_axis_trains_the_shared_decoder_on_more_subjects(cache_dir, tmp_path, capsys):
    out = tmp_path / "subjects"
    args = tiny_args(cache_dir, out, "grid.fractions=[1.0]", "grid.seeds=[0]", "grid.arms=[ridge]",
                     "grid.subjects=[1,2]", "cell.data.synthetic.god_subjects=2", "cell.data.subjects=[sbj_1]")
    assert main(args) == 0
    report = json.loads((out / "scaling.json").read_text())
    cells = {(c["subjects"], c["mode"]): c for c in report["subject_cells"]}
    assert set(cells) == {(1, "any"), (2, "per-subject"), (2, "total")}  # one subject: one cell for both modes
    full = cells[1, "any"]["pairs_per_subject"]["sbj_1"]
    assert cells[2, "per-subject"]["pairs_per_subject"] == {"sbj_1": full, "sbj_2": full}
    assert cells[2, "total"]["pairs_per_subject"] == {"sbj_1": full // 2, "sbj_2": full // 2}
    subjects = report["analysis"]["subjects"]
    assert [r["subjects"] for r in subjects["total"]["curve"]] == [1, 2] == [r["subjects"] for r in
                                                                            subjects["per-subject"]["curve"]]
    assert subjects["total"]["curve"][0] == subjects["per-subject"]["curve"][0]
    for c in report["subject_cells"]:
        assert 0 <= c["test"]["top1"] <= 1 and c["chance"]["top1"] == report["chance_top1"]
        assert c["averaging"] and c["averaging"][0]["repetitions"] == 1
    saved = (out / "runs" / "mlp-shared-total-S2-s0" / "model")
    from mindvis.align.decoders import load_decoder
    assert set(load_decoder(saved).config.subjects) == {"sbj_1", "sbj_2"}
    assert (out / "subjects.png").is_file() and "Subjects axis" in (out / "scaling.md").read_text()
    # the world must hold the subjects; other datasets have no subjects axis
    assert main(tiny_args(cache_dir, tmp_path / "few", "grid.subjects=[1,3]", "cell.data.subjects=[sbj_1]")) == 2
    assert "sbj_2" in capsys.readouterr().err
    assert main(tiny_args(cache_dir, tmp_path / "nsd", "grid.subjects=[2]", "--dataset", "nsd")) == 2
    assert "subjects axis" in capsys.readouterr().err


def test_device_presets_set_the_worlds_noise(tmp_path, capsys):
    assert main(["--dataset", "synthetic", "--device", "3t", "--out", str(tmp_path / "d"), "--print-config"]) == 0
    text = capsys.readouterr().out
    assert "snr: 0.06" in text and "test_repeats: 35" in text
    assert main(["--dataset", "synthetic", "--device", "7t", "--world", "god", "--out", str(tmp_path / "d"),
                 "--print-config"]) == 0
    text = capsys.readouterr().out
    assert "snr: 0.25" in text and "n_train_classes: 150" in text and "- 1000" in text
    assert main(["--dataset", "god", "--device", "7t", "--out", str(tmp_path / "d")]) == 2
    assert "--device / --world set the synthetic world" in capsys.readouterr().err
