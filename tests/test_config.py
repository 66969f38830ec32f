"""The one table of training settings: flags, config files and the loop all read it."""

import os
import re

import pytest

from fer_ray import cli, config
from fer_ray.config import TrainConfig
from fer_ray.errors import UsageError

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs", "training.md")


def parse(argv):
    """The flags `fer-ray train` was given, as settings (what commands/train.py hands to train.resolve)."""
    args = cli.build_parser("train").parse_args(["train", *argv])
    return {k: v for k, v in vars(args).items() if v is not None and k not in ("command", "config") and not k.startswith("_")}


def test_flags_and_config_keys_give_the_same_config():
    flags = parse(["--batch-size", "64", "--optimizer", "adamw", "--augment", '{"rotate": 5}', "--no-amp",
                   "--arch-args", '{"widths": [8, 16]}', "--label-smoothing", "0.1", "--workers", "0"])
    from_file = {"batch_size": 64, "optimizer": "adamw", "augment": {"rotate": 5}, "amp": False,
                 "arch_args": {"widths": [8, 16]}, "label_smoothing": 0.1, "workers": 0}
    assert TrainConfig.from_dict(flags) == TrainConfig.from_dict(from_file)
    assert parse(["--augment", "none"])["augment"] is False
    assert TrainConfig.from_dict({"augment": "none"}).augment["flip"] == 0


def test_every_flag_setting_is_a_flag_and_is_documented():
    docs = open(DOCS).read()
    for name, _, _, help_text, _, _, flag in config.settings():
        assert help_text, name
        if flag:
            assert f"--{name.replace('_', '-')}" in docs, f"docs/training.md does not list --{name}"
        else:
            assert f"`{name}`" in docs, f"docs/training.md does not list the config key {name}"


def test_values_are_checked_against_their_type_and_range():
    with pytest.raises(UsageError, match="epochs must be >= 1"):
        TrainConfig(epochs=0)
    with pytest.raises(UsageError, match="epochs must be an integer"):
        TrainConfig.from_dict({"epochs": "ten"})
    with pytest.raises(UsageError, match="optimizer must be one of sgd, adamw"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(UsageError, match="soft labels must be true or false"):
        TrainConfig.from_dict({"soft_labels": "yes"})
    with pytest.raises(UsageError, match="unknown setting.s. learning_rate"):
        TrainConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(UsageError, match="augment rotate must be >= 0"):
        TrainConfig.from_dict({"augment": {"rotate": -1}})
    with pytest.raises(UsageError, match="run name"):
        TrainConfig(name="../escape")
    assert TrainConfig.from_dict({"lr": 1}).lr == 1.0 and isinstance(TrainConfig.from_dict({"lr": 1}).lr, float)
    assert TrainConfig(optimizer="adamw").lr == 1e-3 and TrainConfig().lr == 0.05


def test_a_resolved_config_round_trips_through_its_dict():
    cfg = TrainConfig(optimizer="adamw", augment={"rotate": 20}, arch_args={"widths": [8]})
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert set(cfg.to_dict()) == set(config.KEYS)
    assert re.fullmatch(r"[a-z_]+", "".join(config.KEYS))
