import pytest
import yaml

from mindvis.config import ConfigError, build_config, save_config, to_plain
from mindvis.configs import preset_names, preset_path
from mindvis.pretrain.cli import build_parser, main, resolve_config
from mindvis.pretrain.config import PretrainConfig


def test_defaults_are_the_papers():
    cfg = build_config(PretrainConfig)
    assert (cfg.model.embed_dim, cfg.model.depth, cfg.model.decoder_depth, cfg.model.mask_ratio) == (1024, 24, 8, 0.75)
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.clip_grad, cfg.train.batch_size) == (2.5e-4, 0.05, 0.8, 100)


def test_model_section_is_mbm_config_without_the_voxel_count():
    from dataclasses import asdict, fields

    from mindvis.models.sc_mbm import MBMConfig
    from mindvis.pretrain.config import ModelConfig

    assert [f.name for f in fields(ModelConfig)] == ["patch_size", "embed_dim", "depth", "num_heads", "decoder_embed_dim",
                                                     "decoder_depth", "decoder_num_heads", "mlp_ratio", "mask_ratio"]
    arch = {k: v for k, v in asdict(ModelConfig()).items() if k != "mask_ratio"}
    assert arch == {k: v for k, v in asdict(MBMConfig()).items() if k != "num_voxels"}
    with pytest.raises(ConfigError, match="num_voxels"):  # the data gives it
        build_config(PretrainConfig, overrides=["model.num_voxels=4096"])


def test_unknown_keys_and_wrong_types_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="train.batchsize"):
        build_config(PretrainConfig, overrides=["train.batchsize=3"])
    with pytest.raises(ConfigError, match="train.batch_size"):
        build_config(PretrainConfig, overrides=["train.batch_size=many"])
    with pytest.raises(ConfigError, match="key=value"):
        build_config(PretrainConfig, overrides=["train.batch_size"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  embed_dimension: 3\n")
    with pytest.raises(ConfigError, match="embed_dimension"):
        build_config(PretrainConfig, preset=bad)
    with pytest.raises(ConfigError, match="not found"):
        build_config(PretrainConfig, preset=tmp_path / "nope.yaml")


def test_every_shipped_preset_loads():
    assert {"hcp", "god", "synthetic", "synthetic-god"} <= set(preset_names("pretrain"))
    for name in preset_names("pretrain"):
        build_config(PretrainConfig, preset=preset_path("pretrain", name))


def test_overrides_win_and_booleans_switch_off(tmp_path):
    cfg = build_config(PretrainConfig, preset=preset_path("pretrain", "hcp"),
                       overrides=["train.batch_size=200", "data.include_god=true"])
    assert cfg.train.batch_size == 200 and cfg.data.include_god is True
    cfg = build_config(PretrainConfig, overrides=["data.include_god=false"], defaults={"data": {"include_god": True}})
    assert cfg.data.include_god is False
    save_config(cfg, tmp_path / "c.yaml")
    again = build_config(PretrainConfig, preset=tmp_path / "c.yaml")
    assert to_plain(again) == to_plain(cfg)
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["data"]["include_god"] is False


def test_cli_derives_preset_from_data_after_overrides():
    p = build_parser()
    assert resolve_config(p.parse_args(["--data", "god", "--data-path", "/x"])).train.lr == 5.3e-5
    cfg = resolve_config(p.parse_args(["--data", "hcp", "--data-path", "/d", "train.epochs=3"]))
    assert cfg.model.embed_dim == 1024 and cfg.data.path == "/d" and cfg.train.epochs == 3
    cfg = resolve_config(p.parse_args([]))  # the embedded default
    assert cfg.data.source == "synthetic" and cfg.model.embed_dim == 128
    cfg = resolve_config(p.parse_args(["--config", "hcp", "--data", "synthetic"]))
    assert cfg.data.source == "synthetic" and cfg.model.embed_dim == 1024


def test_cli_reports_config_errors(capsys):
    assert main(["train.nope=1", "--print-config"]) == 2
    assert "train.nope" in capsys.readouterr().err
    assert main(["--print-config"]) == 0
    assert "mask_ratio: 0.75" in capsys.readouterr().out


def test_yaml_boolean_words_stay_words_in_overrides():
    from mindvis.finetune.config import FinetuneConfig

    cfg = build_config(FinetuneConfig, overrides=["train.mixed_precision=no", "data.include_test_trials=yes",
                                                  "train.train_encoder=off"])
    assert cfg.train.mixed_precision == "no"  # YAML would read `no` as False, which became the string "False"
    assert cfg.data.include_test_trials is True and cfg.train.train_encoder is False


def test_overrides_are_accepted_anywhere_on_the_line(capsys, tmp_path):
    assert main(["train.epochs=1", "--data", "synthetic", f"data.cache_dir={tmp_path}", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["epochs"] == 1 and printed["data"]["cache_dir"] == str(tmp_path)


@pytest.mark.parametrize("override,key", [
    ("train.epochs=0", "train.epochs"), ("model.mask_ratio=1.0", "model.mask_ratio"),
    ("train.batch_size=0", "train.batch_size"), ("train.lr=-1e-4", "train.lr"), ("model.patch_size=0", "model.patch_size"),
    ("model.num_heads=5", "model.num_heads"), ("train.mixed_precision=fp8", "train.mixed_precision"),
    ("data.zero_voxels=1.5", "data.zero_voxels"),
])
def test_pretrain_settings_are_validated_before_anything_runs(override, key, tmp_path, capsys):
    rc = main(["--data", "synthetic", f"data.cache_dir={tmp_path}", "--output-dir", str(tmp_path / "runs"), override])
    err = capsys.readouterr().err
    assert rc == 2 and f"{key}=" in err and "is not allowed" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # no empty run folder for a run that never started


@pytest.mark.parametrize("override,key", [
    ("train.epochs=-1", "train.epochs"), ("data.zero_voxels=2", "data.zero_voxels"),
    ("train.sampler=euler", "train.sampler"), ("train.unet=half", "train.unet"),
    ("train.select_metric=val_fid", "train.select_metric"),
])
def test_finetune_settings_are_validated_before_anything_runs(override, key, tmp_path, capsys):
    from mindvis.finetune.cli import main as finetune_main

    rc = finetune_main(["--dataset", "synthetic", "--encoder", "random", "--output-dir", str(tmp_path / "runs"),
                        override])
    err = capsys.readouterr().err
    assert rc == 2 and f"{key}=" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()
