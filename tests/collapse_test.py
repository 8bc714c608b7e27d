"""A model that learned nothing is caught: one line with 'chance' and what to try, --strict, export's refusal."""

import json
import os

import numpy as np
import pytest

from nopeek_tf.training import collapse


def test_chance_is_the_largest_class_and_the_margin_grows_on_a_small_test_split():
    balanced = np.repeat(np.arange(3), 20)  # 60 test images of 3 classes
    report = collapse.collapse_report(0.46, balanced)  # the best run at alpha 1
    assert report["chance_accuracy"] == pytest.approx(1 / 3, abs=1e-4) and report["collapsed"]
    assert report["collapse_margin"] == pytest.approx(3 * np.sqrt(1 / 3 * 2 / 3 / 60), abs=1e-4)
    assert not collapse.collapse_report(0.93, balanced)["collapsed"]  # the same model at alpha 0.1
    skewed = np.array([0] * 900 + [1] * 100)
    assert collapse.collapse_report(0.92, skewed)["collapsed"]  # naming class 0 always scores 0.90
    assert collapse.collapse_report(0.96, skewed)["collapse_margin"] == 0.05
    message = collapse.collapse_message({"test_accuracy": 0.3833, "num_classes": 3, **report})
    assert "\n" not in message and "at chance (0.3333" in message and "--alpha_warmup_epochs=1" in message
    assert collapse.collapse_message({"test_accuracy": 0.93, "collapsed": False}) is None
    # Where the accuracy without the defence is known, far below it is caught too (at chance says so first):
    below = collapse.collapse_report(0.62, balanced, reference_accuracy=0.93)
    assert below["collapsed"] and below["far_below_reference"]
    assert not collapse.collapse_report(0.80, balanced, reference_accuracy=0.93)["collapsed"]
    assert not collapse.collapse_report(0.40, balanced, reference_accuracy=0.93)["far_below_reference"]
    message = collapse.collapse_message({"test_accuracy": 0.62, "num_classes": 3, **below})
    assert "\n" not in message and "below the 0.9300" in message and "chance" in message and "--alpha" in message


def test_training_at_chance_says_so_strict_refuses_and_export_needs_force(tmp_path, capsys):
    from export import export
    from nopeek_tf import config as config_lib
    from nopeek_tf import training

    config = config_lib.TrainConfig(dataset="orl_faces", image_size=(28, 23), defence="plain", alpha=0.0,
                                    epochs=1, batch_size=140, verbose=0)  # 2 steps on 40 classes: chance
    metrics = training.train_and_evaluate(config, str(tmp_path / "run"))
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: ")]
    assert metrics["collapsed"] and len(warnings) == 1 and "is at chance (0.0250" in warnings[0]
    with open(tmp_path / "run" / "metrics.json") as f:
        assert json.load(f)["collapsed"] is True
    with pytest.raises(collapse.TrainingCollapsed, match=r"^--strict: test accuracy .* is at chance"):
        training.train_and_evaluate(config.replace(strict=True), str(tmp_path / "run"))  # resumed: evaluates only
    known = training.train_and_evaluate(config.replace(reference_accuracy=0.9), str(tmp_path / "run"))
    assert (known["reference_accuracy"], known["far_below_reference"], known["collapsed"]) == (0.9, False, True)
    with pytest.raises(export.ExportError, match="is at chance .*give --force$"):
        export.export_model(export.ExportConfig(model_dir=str(tmp_path / "run")), log=lambda *_: None)
    manifest = export.export_model(export.ExportConfig(model_dir=str(tmp_path / "run"), variants=("float32",),
                                                       parity_images=20, force=True), log=lambda *_: None)
    assert os.path.exists(tmp_path / "run" / "export" / "client" / "client_float32.tflite") and manifest.clients
