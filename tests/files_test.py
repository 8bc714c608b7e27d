"""Atomic writes: a file is either the old one or the whole new one, never half of either."""

import json

import numpy as np
import pytest

from nopeek_tf import files


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    files.write_json(str(path), {"a": 1})
    with pytest.raises(TypeError):
        files.write_json(str(path), {"a": object()})  # fails half-way through serialising
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_writers_keep_the_extension_of_the_temporary_file(tmp_path):
    with files.atomic_path(str(tmp_path / "arrays.npz")) as temporary:
        assert temporary.endswith(".tmp.npz")
        np.savez(temporary, x=np.arange(3))  # numpy would append .npz to any other name
    np.testing.assert_array_equal(np.load(tmp_path / "arrays.npz")["x"], np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arrays.npz"]


def test_json_takes_numpy_scalars_and_csv_takes_every_column(tmp_path):
    files.write_json(str(tmp_path / "r.json"), {"ssim": np.float32(0.5), "n": np.int64(3)}, sort_keys=True)
    assert (tmp_path / "r.json").read_text() == '{\n  "n": 3,\n  "ssim": 0.5\n}\n'
    files.write_csv(str(tmp_path / "r.csv"), [{"run": "a", "x": 1}, {"run": "b", "y": 2}])
    assert (tmp_path / "r.csv").read_text().splitlines() == ["run,x,y", "a,1,", "b,,2"]
