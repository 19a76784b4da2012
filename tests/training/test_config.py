"""The fit config tree: shipped configs load, flags override, bad values name their field."""

from __future__ import annotations

import json
import re

import pytest

from training.cli import main
from training.config import FitConfig, load_config, shipped_configs
from training.dataclass_io import ConfigError, field_docs, leaf_fields


@pytest.mark.parametrize("path", shipped_configs(), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    config = load_config(path)
    assert config.data.seq_len >= 512 and config.train.max_steps > 0
    assert config.train.betas == (0.9, 0.95)
    assert config.train.min_lr_ratio == pytest.approx(1 / 30)
    assert 1 <= config.warmup() <= config.train.warmup_steps


def test_the_stages_are_shipped():
    names = {p.stem for p in shipped_configs()}
    assert {"infilling", "long_context"} <= names


def test_long_context_stage_sets_theta_and_sequence_length():
    infilling = load_config(next(p for p in shipped_configs() if p.stem == "infilling"))
    long_context = load_config(next(p for p in shipped_configs() if p.stem == "long_context"))
    assert long_context.model.rope_theta == 1e6 and long_context.data.seq_len == 16384
    assert long_context.train.lr == 2e-5
    assert infilling.model.rope_theta is None and infilling.data.seq_len == 4096


def test_every_field_has_a_line_of_doc():
    undocumented = [name for name, _, doc in leaf_fields(FitConfig) if not doc]
    assert undocumented == []
    assert set(field_docs(FitConfig)) == {"model", "data", "train", "lora", "eval", "output"}


def test_warmup_is_scaled_for_short_runs():
    values = {"model": {"base": "b"}, "data": {"dir": "d"}}
    long_run = load_config(None, {**values, "train": {"max_steps": 100_000}})
    short_run = load_config(None, {**values, "train": {"max_steps": 200}})
    assert long_run.warmup() == 1000 and short_run.warmup() == 10


VALID = {"model": {"base": "models/base"}, "data": {"dir": "data/corpus"}}


@pytest.mark.parametrize(
    ("section", "fields", "message"),
    [
        ("train", {"lrr": 1e-4}, "train.lrr: unknown field"),
        ("train", {"lr": "fast"}, "train.lr: expected a number, got 'fast'"),
        ("train", {"method": "dora"}, "train.method: expected one of 'full', 'lora', 'qlora'"),
        ("train", {"betas": [0.9]}, "train.betas: expected 2 values"),
        ("train", {"grad_accum": 0}, "train.grad_accum: must be positive"),
        ("data", {"fim_rate": 1.5}, "data.fim_rate: must be in [0, 1]"),
        ("data", {"seq_len": 8}, "data.seq_len: must be at least 16"),
        ("data", {"dir": ""}, "data.dir: required"),
        ("lora", {"rank": 0}, "lora.rank: must be positive"),
        ("trian", {"lr": 1.0}, "trian: unknown field"),
        ("model", {"preset": "7B"}, "model.base: a base checkpoint brings its own shape"),
        ("model", {"base": None, "tokenizer": "t.model"}, "model.args: give the model's shape"),
    ],
)
def test_bad_configs_name_the_field(tmp_path, section, fields, message):
    values = json.loads(json.dumps(VALID))
    values.setdefault(section, {}).update(fields)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(values))
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        load_config(path)
    assert str(path) in str(error.value)


def test_a_config_that_is_not_toml_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train\nlr = 1\n")
    with pytest.raises(ConfigError, match=f"{re.escape(str(path))}: not valid TOML"):
        load_config(path)


def test_flags_override_the_file_and_bad_flags_name_the_field(tmp_path, capsys):
    config = next(p for p in shipped_configs() if p.stem == "infilling")
    argv = ["fit", "--config", str(config), "--print-config", "--train.lr", "1e-4", "--lora.targets", "q_proj,v_proj"]
    assert main([*argv, "--data.dir", "/data/x", "--train.gradient_checkpointing", "false"]) == 0
    printed = capsys.readouterr().out
    assert '"lr": 0.0001' in printed and '"dir": "/data/x"' in printed
    assert '"targets": [\n      "q_proj",\n      "v_proj"\n    ]' in printed
    assert main(["fit", "--config", str(config), "--train.max_steps", "many"]) == 2
    assert "--train.max_steps: expected an integer, got 'many'" in capsys.readouterr().err
