"""The one configuration schema: flags, checks, JSON and the sweep's flags all come from the dataclass fields."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
from absl import flags

from nopeek_tf import config as config_lib
from nopeek_tf.experiments import sweep
from tests.conftest import REPO_ROOT
from train import sweep as sweep_script

CONFIG_MODULES = sorted(name[:-3] for name in os.listdir(os.path.join(REPO_ROOT, "train", "configs"))
                        if name.endswith(".py") and not name.startswith("_"))


def _flag_values(*config_classes, include_swept=True):
    flag_values = flags.FlagValues()
    for config_class in config_classes:
        config_lib.define_flags(config_class, include_swept=include_swept, flag_values=flag_values)
    return flag_values


def test_every_train_field_is_a_flag_of_train_and_sweep_and_saved_in_config_json():
    train_flags = _flag_values(config_lib.TrainConfig)
    sweep_flags = _flag_values(config_lib.TrainConfig, include_swept=False)
    saved = config_lib.TrainConfig().to_json()
    for field, _ in config_lib.leaf_fields(config_lib.TrainConfig):
        if not field.metadata["flag"]:
            continue
        assert field.name in train_flags and field.name in saved, field.name
        assert (field.name in sweep_flags) != field.metadata["swept"], field.name
    assert {"cut", "defence", "alpha", "noise", "noise_scale", "adversary_weight"} == {
        f.name for f, _ in config_lib.leaf_fields(config_lib.TrainConfig) if f.metadata["swept"]}


@pytest.mark.parametrize("argv, defence, cut, bottleneck, alpha", [
    (["--dataset=fashion_mnist"], "recommended", "dense", 4, 0.0),
    (["--dataset=orl_faces", "--epochs=3"], "recommended", "dense", 32, 0.0),
    (["--dataset=fashion_mnist", "--alpha=1"], "plain", "auto", 0, 1.0),  # a defence flag: the user's defence
    (["--dataset=fashion_mnist", "--cut=conv2"], "plain", "conv2", 0, 1.0),
    (["--dataset=fashion_mnist", "--defence=plain"], "plain", "auto", 0, 1.0),
    (["--dataset=mnist"], "plain", "auto", 0, 1.0),  # no measured recommendation
])
def test_train_flags_take_the_recommended_defence_unless_a_defence_flag_is_given(
        argv, defence, cut, bottleneck, alpha):
    flag_values = _flag_values(config_lib.TrainConfig)
    flag_values(["prog", *argv])
    config = config_lib.from_flags(config_lib.TrainConfig, flag_values=flag_values).with_defence(
        config_lib.given_flags(config_lib.TrainConfig, flag_values))
    assert (config.defence, config.cut, config.bottleneck, config.alpha) == (defence, cut, bottleneck, alpha)
    assert config.with_defence() == config  # train_and_evaluate applies it again: no change
    assert config.to_json()["defence"] == defence
    if defence == "recommended":
        assert "--defence=plain" in config.defence_summary()


def test_library_configs_are_plain_unless_they_ask():
    assert config_lib.TrainConfig(dataset="fashion_mnist").with_defence().defence == "plain"
    asked = config_lib.TrainConfig(dataset="fashion_mnist", defence="recommended", epochs=2)
    assert asked.with_defence() == dataclasses.replace(asked, **config_lib.RECOMMENDED_DEFENCE["fashion_mnist"])
    assert config_lib.TrainConfig(dataset="fashion_mnist", defence="recommended", alpha=3).with_defence() == \
        config_lib.TrainConfig(dataset="fashion_mnist", alpha=3)


def test_flags_parse_into_the_config_with_types_and_defaults():
    flag_values = _flag_values(config_lib.TrainConfig)
    flag_values(["prog", "--alpha=3", "--image_size=56x46", "--devices=/cpu:0,/cpu:1", "--mixed_precision",
                 "--epochs=7"])
    config = config_lib.from_flags(config_lib.TrainConfig, flag_values=flag_values, verbose=0)
    assert (config.alpha, config.image_size, config.devices, config.mixed_precision, config.epochs) == (
        3.0, (56, 46), ("/cpu:0", "/cpu:1"), True, 7)
    assert config.learning_rate == config_lib.TrainConfig().learning_rate == 1e-3 and config.verbose == 0
    assert json.loads(json.dumps(config.to_json()))["image_size"] == [56, 46]
    assert "verbose" not in config.to_json()


def test_base_values_hold_where_no_flag_is_given():
    flag_values = _flag_values(sweep.SweepConfig)
    flag_values(["prog", "--alphas=0,0.3"])
    base = sweep.SweepConfig(sweep_dir="runs/x", alphas=(0, 1), gaussian_noise=())
    merged = config_lib.from_flags(sweep.SweepConfig, base=base, flag_values=flag_values)
    assert (merged.sweep_dir, merged.alphas, merged.gaussian_noise) == ("runs/x", (0.0, 0.3), ())


@pytest.mark.parametrize("config, message", [
    (config_lib.TrainConfig(alpha=-1), "--alpha must be >= 0, got -1"),
    (config_lib.TrainConfig(batch_size=1), "--batch_size must be at least 2 (dCor is computed over pairs), or 0 for the dataset's default, got 1"),
    (config_lib.TrainConfig(client_width=0), "--client_width must be > 0, got 0"),
    (config_lib.TrainConfig(noise="pink"), "--noise must be one of none, gaussian, uniform, got 'pink'"),
    (config_lib.TrainConfig(noise="gaussian"), "--noise_scale must be > 0 with --noise=gaussian/uniform"),
    (config_lib.TrainConfig(strategy="mirrored", devices=None, leakage_images=1), "--leakage_images must be 0"),
    (config_lib.AttackBudget(leaked_fraction=1.0), "--leaked_fraction must be between 0 and 1"),
    (config_lib.EvaluationConfig(test_images=0), "--test_images must be at least 1, got 0"),
    (sweep.SweepConfig(sweep_dir="x", alphas=(1, -2)), "--alphas must be >= 0, got -2"),
    (sweep.SweepConfig(), "--sweep_dir is required"),
])
def test_checks_name_the_flag(config, message):
    with pytest.raises(config_lib.ConfigError) as error:
        config.validate()
    assert str(error.value).startswith(message)


def test_changed_settings_ignores_resumable_ones_and_fills_missing_keys_with_defaults():
    config = config_lib.TrainConfig(alpha=2.0, epochs=5)
    previous = {key: value for key, value in config.to_json().items() if key != "client_width"}
    assert config_lib.changed_settings(previous, config) == []
    assert config_lib.changed_settings({**previous, "epochs": 9, "strategy": "mirrored"}, config) == []
    assert config_lib.changed_settings({**previous, "alpha": 1.0}, config) == ["alpha"]
    assert config_lib.changed_settings({**previous, "client_width": 0.5}, config) == ["client_width"]


@pytest.mark.parametrize("name", CONFIG_MODULES)
def test_sweep_configuration_modules_load_validate_and_hold_their_command(name):
    settings = sweep_script.load_config_module(name)
    assert isinstance(settings, sweep.SweepSettings)
    for part in (settings.train, settings.budget, settings.evaluation):
        part.validate()
    assert settings.sweep.sweep_dir
    module = sys.modules[f"train.configs.{name}"]
    assert f"python -m train.sweep --config={name}" in module.__doc__
    assert sweep.plan_settings(settings)[0].strength == 0  # the undefended model comes first


def test_unknown_sweep_configuration_is_one_line_listing_the_known_ones(tmp_path):
    process = subprocess.run([sys.executable, "-m", "train.sweep", "--config=nope", f"--sweep_dir={tmp_path}"],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    lines = [line for line in process.stderr.splitlines() if line.strip()]
    assert process.returncode != 0 and len(lines) == 1, process.stderr
    assert lines[0].startswith("error: --config: no sweep configuration 'nope'") and "fashion_mnist" in lines[0]


def test_each_dataset_has_default_epochs_and_batch_size_that_finish_in_minutes():
    assert config_lib.TrainConfig(dataset="fashion_mnist").with_dataset_defaults().epochs == 2
    assert config_lib.TrainConfig(dataset="fashion_mnist").with_dataset_defaults().batch_size == 128
    assert config_lib.TrainConfig(dataset="orl_faces").with_dataset_defaults().epochs == 40
    assert config_lib.TrainConfig(dataset="folder", data_dir="x").with_dataset_defaults().batch_size == 32
    given = config_lib.TrainConfig(dataset="fashion_mnist", epochs=7, batch_size=16).with_dataset_defaults()
    assert (given.epochs, given.batch_size) == (7, 16)


def test_train_config_is_typed_parts_with_flat_names_and_old_config_json_loads():
    config = config_lib.TrainConfig(dataset="fashion_mnist", alpha=2.0, bottleneck=4, epochs=3, strategy="mirrored")
    assert isinstance(config.protection, config_lib.Defence) and config.protection.alpha == config.alpha == 2.0
    assert (config.data.dataset, config.optimisation.epochs, config.distribution.strategy) == (
        "fashion_mnist", 3, "mirrored")
    assert config.replace(alpha=0.5).protection == dataclasses.replace(config.protection, alpha=0.5)
    assert config_lib.TrainConfig(protection=config_lib.Defence(alpha=2.0, bottleneck=4), dataset="fashion_mnist",
                                  epochs=3, strategy="mirrored") == config
    # config.json is flat, as before the parts: an earlier file (a key missing, one unknown) loads.
    saved = config.to_json()
    assert "protection" not in saved and saved["alpha"] == 2.0 and saved["bottleneck"] == 4
    earlier = {key: value for key, value in saved.items() if key != "device_noise_ramp_epochs"}
    assert config_lib.TrainConfig.from_json({**earlier, "removed_setting": 1}) == config
    with pytest.raises(TypeError, match="no setting"):
        config_lib.TrainConfig(alhpa=1.0)
