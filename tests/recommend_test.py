"""train.recommend: the choice among the candidates, the limits, and (slow) a real search on a tiny model and
folder that is killed, resumes, finishes within its budget and leaves a model dir export.export takes."""

import json
import os
import re
import time

import pytest

from nopeek_tf.config import ConfigError, RecommendSettings, TrainConfig
from nopeek_tf.core.split import Cut
from nopeek_tf.experiments import recommend


def _row(run, accuracy, bits, excess, size=4):
    return {"run": run, "trial": run, "test_accuracy": accuracy, "bound_bits": bits, "excess_ssim": excess,
            "activation_bytes_int8": size, "cut": "c", "defence": ""}


def test_the_choice_is_the_lowest_bound_within_the_accuracy_drop_and_says_why():
    rows = [_row(0, 0.90, 5000.0, 0.30), _row(1, 0.89, 40.0, 0.02), _row(2, 0.86, 8.0, 0.01), _row(3, 0.89, 40.0, 0.0)]
    chosen, why = recommend.choose(rows, 0.90, 0.02)
    assert chosen["run"] == 3 and "the lowest bound in bits (40.00 per request) among the 3 of 4" in why
    chosen, why = recommend.choose(rows, 0.99, 0.02)
    assert chosen["run"] == 0 and why.startswith("no candidate came within 0.020") and "--max_accuracy_drop" in why
    assert [row["run"] for row in recommend.pareto(rows)] == [0, 2, 3]  # 1 is beaten by 3 on excess
    # Noise without a bottleneck is dropped: the sampler's two such proposals are the same candidate
    plain = {"cut": "c", "bottleneck": 0, "device_noise": 0.1, "alpha": 1.0, "adversary_weight": 0.0}
    assert recommend.trial_config(TrainConfig(), plain, 1) == \
        recommend.trial_config(TrainConfig(), {**plain, "device_noise": 0.5}, 1)
    assert recommend.trial_config(TrainConfig(), {**plain, "bottleneck": 2}, 1) != \
        recommend.trial_config(TrainConfig(), {**plain, "bottleneck": 2, "device_noise": 0.5}, 1)


def test_the_limits_name_their_flag():
    cuts = [Cut("conv1", (14, 14, 32), 6272, 10, 0.3), Cut("conv2", (7, 7, 64), 3136, 90, 0.9)]
    assert [cut.name for cut in recommend.allowed_cuts(cuts, 0.5)] == ["conv1"]
    with pytest.raises(ConfigError, match=r"--max_device_flops=0.1: no valid cut is that small \(the smallest, conv1, "
                                          r"runs 30% of the FLOPs\)"):
        recommend.allowed_cuts(cuts, 0.1)
    with pytest.raises(ConfigError, match="--max_device_flops is a share of the model's FLOPs: at most 1"):
        RecommendSettings(max_device_flops=2.0).validate()


@pytest.mark.slow
def test_a_search_is_killed_resumes_finishes_in_its_budget_and_its_model_exports(tmp_path):
    import keras

    from export import export
    from tests.split_test import write_faces
    from tests.split_training_test import Program

    images = write_faces(tmp_path / "faces", people=(1, 2, 3, 4), size=(23, 28))  # 4 people x 10 colour faces
    inputs = keras.Input((28, 23, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="stem")(inputs)
    y = keras.layers.Conv2D(8, 3, padding="same", name="block_conv")(x)
    x = keras.layers.ReLU(name="block_out")(keras.layers.Add(name="add")([x, y]))
    outputs = keras.layers.Dense(4, name="logits")(keras.layers.GlobalAveragePooling2D(name="pool")(x))
    keras.Model(inputs, outputs).save(tmp_path / "tiny.keras")
    model_dir = tmp_path / "mine"
    args = [f"--model_file={tmp_path / 'tiny.keras'}", "--dataset=folder", f"--data_dir={images}", "--epochs=3",
            "--batch_size=8", "--trial_epochs=1", "--max_accuracy_drop=0.5", f"--model_dir={model_dir}"]
    first = Program("train.recommend", [*args, "--budget_minutes=5"], tmp_path / "first.log")
    first.wait_for(r"recommend: candidate 0[: ]", timeout=300)
    first.kill()
    started = time.time()
    output = Program("train.recommend", [*args, "--budget_minutes=1.5"], tmp_path / "second.log").finish(300)
    assert time.time() - started < 1.5 * 60 + 60  # its budget (a started candidate may finish after it)
    before = int(re.search(r"\((\d+) candidates finished before\)", output).group(1))
    assert before >= 1 or "cut off by an earlier stop: marked failed" in output  # the study resumed
    choice = json.load(open(model_dir / "recommend" / "choice.json"))
    assert choice["candidates"] >= 1 and choice["command"].startswith("python -m train.train --defence=plain")
    for name in ("frontier.csv", "frontier.md", "frontier.png", "search.db"):
        assert (model_dir / "recommend" / name).exists()
    assert re.search(r"^reproduce: python -m train.train .*--model_dir=", output, re.MULTILINE)
    manifest = export.export_model(export.ExportConfig(model_dir=str(model_dir), variants=("float32",),
                                                       parity_images=9, force=True), log=lambda *_: None)
    assert manifest.cut == choice["cut"] and os.path.exists(model_dir / "export" / "client" / "client_float32.tflite")
