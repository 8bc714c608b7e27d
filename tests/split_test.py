"""Your own model and data: splitting any Keras model at a named layer, the folder loader, end to end."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from nopeek_tf import config as config_lib
from nopeek_tf.training import data
from nopeek_tf.core import models, split
from nopeek_tf import training

ORL = data.orl_faces_dir()


def residual_model(input_shape=(24, 20, 3), classes=3, softmax=False):
    """A functional model with a skip connection: the add's inside is crossed, its output is a valid cut."""
    image = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(image)
    y = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="inner")(x)
    y = keras.layers.BatchNormalization(name="inner_bn")(y)
    x = keras.layers.Add(name="block_add")([x, y])
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dropout(0.2, name="dropout")(x)
    outputs = keras.layers.Dense(classes, activation="softmax" if softmax else None, name="predictions")(x)
    return keras.Model(image, outputs, name="residual")


def test_a_sequential_model_splits_and_keeps_its_weights():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((12, 10, 1)), keras.layers.Conv2D(4, 3, activation="relu", name="c1"),
                              keras.layers.MaxPooling2D(name="p1"), keras.layers.Flatten(name="f"),
                              keras.layers.Dense(5, name="d")])
    assert [cut.name for cut in split.list_cuts(model)] == ["c1", "p1", "f"]
    halves = split.split_model(model, "p1", alpha=1.0)
    assert halves.client.output_shape == (None, 5, 4, 4)
    x = np.random.default_rng(0).uniform(size=(6, 12, 10, 1)).astype("float32")
    np.testing.assert_allclose(halves.full(x), model(x), atol=1e-6)


def test_a_crossed_cut_is_refused_with_the_crossing_tensors_and_the_nearest_valid_cuts():
    model = residual_model()
    assert [cut.name for cut in split.list_cuts(model)] == ["stem", "block_add", "pool", "flatten", "dropout"]
    with pytest.raises(split.CutError) as error:
        split.split_model(model, "inner_bn")
    message = str(error.value)
    assert "\n" not in message and "cut" in message
    assert "stem" in message and "nearest valid cuts are stem before and block_add after" in message
    with pytest.raises(split.CutError, match="not a layer of the model; its layers are stem, inner, inner_bn"):
        split.split_model(model, "nope")
    with pytest.raises(split.CutError, match="leaves nothing to the server"):
        split.split_model(model, "predictions")


def test_flops_share_and_values_sent():
    cuts = {cut.name: cut for cut in split.list_cuts(residual_model())}
    stem = 2 * 24 * 20 * 8 * 9 * 3
    inner = 2 * 24 * 20 * 8 * 9 * 8
    dense = 2 * (12 * 10 * 8) * 3
    assert cuts["stem"].client_flops == stem and cuts["block_add"].client_flops == stem + inner
    assert cuts["block_add"].client_flops_share == pytest.approx((stem + inner) / (stem + inner + dense))
    assert cuts["pool"].shape == (12, 10, 8) and cuts["pool"].values == 960


def test_a_softmax_model_gives_logits_and_pretrained_weights_are_kept():
    keras.utils.set_random_seed(1)
    model = residual_model(softmax=True)
    for layer in model.layers:  # "pretrained": weights that are not the initialiser's
        layer.set_weights([w + np.random.default_rng(2).normal(0, 0.1, w.shape).astype(w.dtype)
                           for w in layer.get_weights()])
    assert split.ends_in_softmax(model)
    halves = split.split_model(model, "block_add")
    x = np.random.default_rng(0).uniform(size=(5, 24, 20, 3)).astype("float32")
    logits = halves.full(x, training=False).numpy()
    np.testing.assert_allclose(tf.nn.softmax(logits), model(x, training=False), atol=1e-6)
    # A Softmax layer at the end is left out the same way.
    wrapped = keras.Sequential([keras.Input((24, 20, 3)), residual_model(), keras.layers.Softmax(name="soft")])
    np.testing.assert_allclose(tf.nn.softmax(split.split_model(wrapped, "block_add").full(x)), wrapped(x), atol=1e-6)


def test_mobilenet_v2_nested_splits_at_a_block_output():
    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2((32, 32, 3), alpha=0.35, weights=None, include_top=False, pooling="avg")
    model = keras.Sequential([keras.Input((32, 32, 3)), base, keras.layers.Dense(4, name="head")])
    names = [cut.name for cut in split.list_cuts(model)]
    assert "block_2_add" in names and "block_3_expand" in names and "block_4_expand" not in names
    with pytest.raises(split.CutError, match="nearest valid cuts are block_3_project_BN before and block_4_add after"):
        split.split_model(model, "block_4_expand")
    halves = split.split_model(model, "block_2_add", bottleneck=4)
    assert halves.client.output_shape == (None, 8, 8, 4)
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype("float32")
    assert halves.full(x).shape == (2, 4)
    np.testing.assert_allclose(split.split_model(model, "block_2_add").full(x), model(x), atol=1e-5)
    built = split.build_application("MobileNetV2", (32, 32, 1), 10, {"alpha": 0.35})
    assert built.output_shape == (None, 10) and not split.ends_in_softmax(built)
    with pytest.raises(ValueError, match="unknown keras.applications network"):
        split.build_application("NotANet", (32, 32, 3), 10)


# --- The folder loader -------------------------------------------------------------------------


def orl_face(person: int, image: int) -> np.ndarray:
    return data.read_pgm(os.path.join(ORL, f"s{person}", f"{image}.pgm"))


def tinted(grey: np.ndarray, seed: int) -> np.ndarray:
    """A colour version of a grey face: each channel scaled differently (colour unrelated to the class)."""
    scale = np.random.default_rng(seed).uniform(0.5, 1.0, 3)
    return np.clip(grey[..., None] * scale, 0, 255).astype(np.uint8)


def write_faces(root, people=(1, 2, 3), images=range(1, 11), colour=True, extension=".png", size=(46, 56)):
    for person in people:
        folder = os.path.join(root, f"person{person}")
        os.makedirs(folder, exist_ok=True)
        for index in images:
            pixels = orl_face(person, index)
            picture = Image.fromarray(tinted(pixels, 10 * person + index) if colour else pixels)
            picture.resize(size).save(os.path.join(folder, f"{index}{extension}"))
    return str(root)


@pytest.mark.parametrize("colour,extension", [(True, ".png"), (False, ".jpg"), (True, ".jpeg"), (False, ".bmp")])
def test_folder_loader_colour_and_grey(tmp_path, colour, extension):
    root = write_faces(tmp_path, colour=colour, extension=extension)
    raw = data.load("folder", root, test_fraction=0.3)
    assert raw.info.class_names == ("person1", "person2", "person3")
    assert raw.info.image_shape == (56, 46, 3 if colour else 1)
    assert (raw.info.num_train, raw.info.num_test) == (21, 9)
    resized = data.load("folder", root, image_size=(28, 23), channels=3)
    assert resized.info.image_shape == (28, 23, 3)
    image, label = next(iter(resized.train))
    assert image.dtype == tf.uint8 and image.shape == (28, 23, 3) and int(label) == 0


def test_folder_with_train_and_test_subfolders_and_gif(tmp_path):
    write_faces(tmp_path / "train", images=range(1, 8))
    write_faces(tmp_path / "test", images=range(8, 11), extension=".gif")
    raw = data.load("folder", str(tmp_path))
    assert (raw.info.num_train, raw.info.num_test) == (21, 9) and "train/ and test/" in raw.info.source


def test_folder_bad_input_names_the_problem(tmp_path):
    with pytest.raises(data.DatasetError, match="does not exist"):
        data.load("folder", str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(data.DatasetError, match="holds no class subfolders"):
        data.load("folder", str(empty))
    one = write_faces(tmp_path / "one", people=(1,))
    with pytest.raises(data.DatasetError, match="holds one class .*at least two"):
        data.load("folder", one)
    hollow = write_faces(tmp_path / "hollow", people=(1, 2))
    os.makedirs(os.path.join(hollow, "person9"))
    with pytest.raises(data.DatasetError, match="person9 holds no images"):
        data.load("folder", hollow)
    broken = write_faces(tmp_path / "broken", people=(1, 2))
    with open(os.path.join(broken, "person2", "bad.png"), "wb") as f:
        f.write(b"not a png")
    with pytest.raises(data.DatasetError, match=r"bad\.png: not a readable image"):
        data.load("folder", broken)
    mixed = write_faces(tmp_path / "mixed", people=(1,), size=(46, 56))
    write_faces(tmp_path / "mixed", people=(2,), size=(40, 40))
    with pytest.raises(data.DatasetError, match="differ in size.*--image_size"):
        data.load("folder", mixed)


def test_bad_model_flags_name_the_problem(tmp_path):
    root = write_faces(tmp_path / "faces")
    model_file = str(tmp_path / "grey.keras")
    residual_model((56, 46, 1)).save(model_file)
    base = config_lib.TrainConfig(dataset="folder", data_dir=root, model_file=model_file, epochs=1, verbose=0)
    with pytest.raises(config_lib.ConfigError, match="--channels 3 does not match --model_file's input"):
        training.start_run(config_lib.TrainConfig(**{**base.__dict__, "channels": 3}), str(tmp_path / "a"))
    with pytest.raises(config_lib.ConfigError, match="--cut: cut 'nope' is not a layer of the model; its layers"):
        training.start_run(config_lib.TrainConfig(**{**base.__dict__, "cut": "nope"}), str(tmp_path / "b"))
    with pytest.raises(config_lib.ConfigError, match="--cut: cut 'inner' is crossed"):
        training.start_run(config_lib.TrainConfig(**{**base.__dict__, "cut": "inner"}), str(tmp_path / "c"))
    assert not os.path.exists(tmp_path / "b") and not os.path.exists(tmp_path / "c")
    with pytest.raises(config_lib.ConfigError, match="--model_file .* no such file"):
        config_lib.TrainConfig(dataset="folder", data_dir=root, model_file=str(tmp_path / "none.keras")).validate()
    with pytest.raises(config_lib.ConfigError, match="--dataset=folder needs --data_dir"):
        config_lib.TrainConfig(dataset="folder").validate()
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"junk")
    with pytest.raises(config_lib.ConfigError, match="cannot be loaded as a Keras model"):
        training.start_run(config_lib.TrainConfig(**{**base.__dict__, "model_file": str(junk)}), str(tmp_path / "d"))


def test_the_library_takes_a_tf_data_dataset():
    images = np.stack([orl_face(p, i)[::4, ::4, None] for p in (1, 2) for i in range(1, 11)])
    labels = np.repeat([0, 1], 10)
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    raw = data.from_datasets(ds.take(16), ds.skip(16), ["a", "b"])
    assert raw.info.image_shape == (28, 23, 1) and raw.info.num_train == 16 and raw.info.num_test == 4
    with pytest.raises(data.DatasetError, match="unbatched"):
        data.from_datasets(ds.batch(2), ds, ["a", "b"])


@pytest.mark.slow  # about 24 s: the default suite stays under 5 minutes
def test_your_own_model_on_a_folder_of_colour_pngs_end_to_end(tmp_path):
    """A saved Keras model + a folder of colour PNGs -> train -> export -> the local server -> the edge client
    classifies a colour JPEG of another size as the Keras model does."""
    from edge.client import EdgeClient, load_image
    from export import export
    from tests.local_server import LocalServer

    root = write_faces(tmp_path / "faces", people=(1, 2, 3, 4))
    model_file = str(tmp_path / "mine.keras")
    keras.utils.set_random_seed(0)
    residual_model((28, 23, 3), classes=4, softmax=True).save(model_file)
    model_dir = str(tmp_path / "run")
    config = config_lib.TrainConfig(dataset="folder", data_dir=root, model_file=model_file, cut="block_add",
                                    alpha=1.0, epochs=3, batch_size=8, dcor_batch_size=8, verbose=0)
    metrics = training.train_and_evaluate(config, model_dir)
    assert metrics["input_shape"] == [28, 23, 3] and metrics["class_names"] == [f"person{p}" for p in (1, 2, 3, 4)]
    assert metrics["network"] == "mine.keras" and metrics["cut"] == "block_add"
    assert 0 < metrics["client_flops_share"] < 1

    from nopeek_tf.experiments import evaluation
    from nopeek_tf.config import AttackBudget, EvaluationConfig

    leakage = evaluation.evaluate_leakage(
        model_dir, budget=AttackBudget(decoder_epochs=2, decoder_width=4, leaked_fraction=0.5, inversion_steps=5,
                                       inversion_images=4),
        evaluation=EvaluationConfig(test_images=12, recognizer_epochs=1))
    attacks = {attack["attack"]: attack for attack in leakage["attacks"]}
    assert set(attacks) == {"leaked_pairs", "public_client", "public_client_residual", "label_aware", "inversion"}
    assert 0 < leakage["floor_ssim"] < 1 and leakage["excess_ssim"] == pytest.approx(
        leakage["worst_ssim"] - leakage["floor_ssim"])
    reconstructions = np.load(os.path.join(model_dir, "reconstructions.npz"))
    assert reconstructions["original"].shape[1:] == (28, 23, 3) and reconstructions["label_aware"].shape[-1] == 3

    manifest = export.export_model(export.ExportConfig(model_dir=model_dir, export_dir=str(tmp_path / "export"),
                                                       parity_images=12, representative_images=20,
                                                       force=True),  # briefly trained: the export is tested
                                   log=lambda *_: None)
    assert manifest.preprocessing.channels == 3 and manifest.preprocessing.image_size == [28, 23]
    assert manifest.preprocessing.resize_method == "area" and manifest.arch == "mine.keras"
    assert manifest.class_names == [f"person{p}" for p in (1, 2, 3, 4)]
    for client in manifest.clients.values():
        assert client.parity["top1_agreement"] >= 0.9, client

    photo = str(tmp_path / "photo.jpg")
    Image.fromarray(tinted(orl_face(3, 10), 7)).save(photo, quality=95)  # 112x92 colour JPEG
    full = models.split_halves(keras.models.load_model(os.path.join(model_dir, "model.keras"), compile=False)).full
    expected = int(np.argmax(full(load_image(photo, manifest.preprocessing)[None].astype("float32") / 255.0)))
    server = LocalServer({manifest.model_name: str(tmp_path / "export" / "serving" / manifest.model_name)})
    try:
        for variant, address, transport in (("float32", server.rest, "rest"), ("int8", server.grpc, "grpc")):
            client = EdgeClient(str(tmp_path / "export" / "client" / f"client_{variant}.tflite"), server=address,
                                transport=transport)
            result = client.classify(photo)
            assert result.class_name == manifest.class_names[result.class_id]
            if variant == "float32":
                assert result.class_id == expected
    finally:
        server.stop()


def test_a_model_that_rescales_0_255_pixels_is_warned_about():
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Rescaling(1 / 255, name="scale"),
                              keras.layers.Flatten(name="f"), keras.layers.Dense(2, name="d")])
    assert "feeds pixels in [0, 1]" in split.input_scale_warning(model)
    assert split.input_scale_warning(residual_model()) is None


def test_list_cuts_from_the_command_line(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    model_file = str(tmp_path / "mine.keras")
    residual_model().save(model_file)
    result = subprocess.run([sys.executable, "-m", "train.train", f"--model_file={model_file}", "--list_cuts"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("residual: 5 valid cuts of 8 layers")
    rows = {line.split()[-4] if line.startswith("*") else line.split()[0]: line for line in lines[2:]}
    assert set(rows) == {"stem", "block_add", "pool", "flatten", "dropout"}
    assert "24x20x8" in rows["stem"] and "3840" in rows["stem"]
    assert sum(line.startswith("*") for line in lines) == 1


@pytest.mark.parametrize("name,options", [("MobileNetV3Small", {"alpha": 0.75}), ("EfficientNetB0", {})])
def test_other_keras_applications_build_and_split(name, options):
    keras.utils.set_random_seed(0)
    network = split.build_application(name, (32, 32, 3), 5, options)
    assert network.output_shape == (None, 5) and not split.ends_in_softmax(network)
    cut = split.default_cut(network)
    halves = split.split_model(network, cut)
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(halves.full(x, training=False), network(x, training=False), atol=1e-4)
    assert 0 < next(c for c in split.list_cuts(network) if c.name == cut).client_flops_share <= 0.5
