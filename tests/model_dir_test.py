"""The model dir layout and its loader's errors (the loading itself is exercised by export and leakage tests)."""

import pytest

from nopeek_tf import model_dir as model_dir_lib


def test_missing_model_dir_is_named(tmp_path):
    with pytest.raises(model_dir_lib.ModelDirError, match="does not exist"):
        model_dir_lib.load(str(tmp_path / "nowhere"))


def test_model_dir_without_model_says_train_first(tmp_path):
    (tmp_path / model_dir_lib.METRICS_FILE).write_text("{}")
    with pytest.raises(model_dir_lib.ModelDirError, match="holds no trained model .*python -m train.train"):
        model_dir_lib.load(str(tmp_path))
