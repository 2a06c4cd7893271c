"""The whole chain (stage A -> stage B -> sampling -> evaluation -> report) on the smallest settings."""
import json

import numpy as np

from mindvis.demo import main
from mindvis.models.dc_ldm import DCLDM
from mindvis.models.sc_mbm import MaskedBrainModel

from .conftest import TINY_FINETUNE, TINY_TRAIN, world_overrides


def test_demo_chain_writes_every_artifact_and_they_reload(cache_dir, tiny_prior, tmp_path):
    world = world_overrides(cache_dir)
    out = tmp_path / "demo"
    assert main(["--out", str(out), "--steps", "2", "--num-samples", "2", "--ablation", "--seeds", "2",
                 "--encoder-lrs", "1e-4", "1e-3",
                 "--pretrain", *world, *TINY_TRAIN, "train.epochs=2", "train.checkpoint_every=2",
                 "--finetune", *world, *TINY_FINETUNE, f"model.prior={tiny_prior}", "train.epochs=2",
                 "--eval=--n-way 5 --trials 5"]) == 0
    for f in ("REPORT.md", "claims.json", "samples/grid.png", "samples/images/0000_gt.png", "samples/eval.json",
              "samples/eval.md", "loss_curve_pretrain.png", "loss_curve_finetune.png", "configs/pretrain.yaml",
              "configs/finetune.yaml", "configs/sample.json", "ablation/ablation.md", "prior_ceiling/eval.json"):
        assert (out / f).is_file(), f
    claims = json.loads((out / "claims.json").read_text())
    assert set(claims) >= {"decoding", "masked_modeling", "pretraining_helps"}
    ablation = claims["pretraining_helps"]
    assert len(ablation["rows"]) == 4  # 2 arms x 2 encoder rates
    for arm in ("pretrained", "random"):
        rows = [r for r in ablation["rows"] if r["arm"] == arm]
        best = max(rows, key=lambda r: r["val"]["pcc_identification"]["mean"])
        assert [r["selected"] for r in rows] == [r is best for r in rows]  # selected on validation ...
        assert all(len(r["per_seed"]) == 2 and ("test" in r) == ("test_trials" in r) == r["selected"]
                   for r in rows)  # ... tested once, on the repetition averages and on the single trials
        run = out / "ablation" / best["per_seed"][0]["run"]
        assert json.loads((run / "samples" / "eval.json").read_text())["settings"]["n_images"] == 4
        assert json.loads((run / "samples-trials" / "eval.json").read_text())["settings"]["n_images"] == 4 * 2
    for verdict in (ablation, ablation["single_trials"]):
        assert verdict["holds"] == (verdict["difference"] > verdict["largest_seed_std"])
    assert 0 <= claims["decoding"]["prior_ceiling"] <= 1
    assert set(ablation["linear_probe"]) == {"pretrained", "random", "voxels"}
    assert all(0 <= p["test_identification"]["mean"] <= 1 for p in ablation["linear_probe"].values())
    assert MaskedBrainModel.from_pretrained(out / "pretrain" / "model").config.embed_dim == 32
    DCLDM.from_pretrained(out / "finetune" / "best")
    with np.load(out / "samples" / "samples.npz") as z:
        assert z["samples"].shape[:2] == (4, 2)
    report = (out / "REPORT.md").read_text()
    claims = report.split("## Claims", 1)[1].split("## Evaluation", 1)[0]
    claims_listed = [line.split(" ", 2)[:2] for line in claims.splitlines() if line.strip()]
    assert claims_listed == [["1.", "Decoding"], ["2.", "Pretraining"], ["3.", "Masked"]]  # numbered as listed
