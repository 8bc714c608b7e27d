"""NoPeek Keras layer and split models: loss only in training, dCor metric, halves, saving."""

import os

import keras
import numpy as np
import pytest

from nopeek_tf.core import models
from nopeek_tf.core.dcor import distance_correlation

INPUT_SHAPES = {"mnist_cnn": (28, 28, 1), "orl_cnn": (56, 46, 1), "resnet_small": (32, 32, 3)}


def _compiled(split, learning_rate=1e-3):
    split.full.compile(
        optimizer=keras.optimizers.SGD(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return split.full


def _batch(shape, n=12, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(n, *shape)).astype(np.float32), rng.integers(0, classes, n)


@pytest.mark.parametrize("arch", sorted(models.ARCHITECTURES))
def test_every_cut_splits_into_halves_that_compose_to_the_full_model(arch):
    x, _ = _batch(INPUT_SHAPES[arch], n=4)
    for cut in models.ARCHITECTURES[arch].cuts:
        split = models.build_split_model(arch, INPUT_SHAPES[arch], 7, cut=cut, alpha=1.0)
        assert split.client.output_shape[1:] == split.activation_shape
        assert split.server.input_shape[1:] == split.activation_shape
        full = split.full(x, training=False).numpy()
        assert full.shape == (4, 7)
        np.testing.assert_allclose(split.server(split.client(x)).numpy(), full, atol=1e-5)


def test_default_cut_of_the_small_cnn_is_the_reference_set_up():
    split = models.build_split_model("mnist_cnn", (28, 28, 1), 10)
    assert split.activation_shape == (14, 14, 32)


def test_client_width_narrows_the_client_only():
    split = models.build_split_model("mnist_cnn", (28, 28, 1), 10, cut="dense", client_width=0.25)
    assert split.activation_shape == (32,)
    assert split.client.get_layer("conv1_conv").filters == 8
    resnet = models.build_split_model("resnet_small", (32, 32, 3), 10, cut="block1b", client_width=0.5)
    assert resnet.activation_shape == (32, 32, 8)
    assert resnet.server.get_layer("block2a_conv1").filters == 32  # the server keeps its width
    with pytest.raises(ValueError, match="client_width must be positive"):
        models.build_split_model("mnist_cnn", (28, 28, 1), 10, client_width=0)


def test_halves_share_weights_with_the_full_model():
    split = models.build_split_model("mnist_cnn", (28, 28, 1), 10, alpha=1.0)
    x, _ = _batch((28, 28, 1), n=3)
    kernel = split.full.get_layer("client").get_layer("conv1_conv").kernel
    kernel.assign(kernel * 2.0)
    np.testing.assert_allclose(split.server(split.client(x)).numpy(), split.full(x).numpy(), atol=1e-5)


def test_loss_is_added_only_in_training():
    split = models.build_split_model("mnist_cnn", (28, 28, 1), 10, alpha=2.5)
    x, _ = _batch((28, 28, 1))
    split.full(x, training=True)
    expected = 2.5 * float(distance_correlation(x, split.client(x)))
    assert len(split.full.losses) == 1
    assert float(split.full.losses[0]) == pytest.approx(expected, rel=1e-5)
    split.full(x, training=False)
    assert split.full.losses == []


def test_alpha_zero_adds_no_loss():
    split = models.build_split_model("mnist_cnn", (28, 28, 1), 10, alpha=0.0)
    split.full(_batch((28, 28, 1))[0], training=True)
    assert split.full.losses == []


def test_fit_loss_is_task_loss_plus_alpha_dcor_and_dcor_is_logged():
    alpha = 3.0
    split = models.build_split_model("mnist_cnn", (28, 28, 1), 10, alpha=alpha)
    model = _compiled(split, learning_rate=0.0)  # no update: logs describe these weights
    x, y = _batch((28, 28, 1), n=16)
    cross_entropy = float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, model(x)))
    dcor_value = float(distance_correlation(x, split.client(x)))

    history = model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0).history
    assert history["dcor"][0] == pytest.approx(dcor_value, abs=1e-5)
    assert history["loss"][0] == pytest.approx(cross_entropy + alpha * dcor_value, abs=1e-4)

    evaluation = model.evaluate(x, y, batch_size=16, return_dict=True, verbose=0)
    assert evaluation["dcor"] == pytest.approx(dcor_value, abs=1e-5)
    assert evaluation["loss"] == pytest.approx(cross_entropy, abs=1e-4)  # dCor reported, not added


def test_dcor_metric_averages_batches_and_ignores_single_sample_batches():
    split = models.build_split_model("mnist_cnn", (28, 28, 1), 10, alpha=1.0)
    model = _compiled(split)
    x, y = _batch((28, 28, 1), n=9)
    expected = np.mean([float(distance_correlation(x[i:i + 4], split.client(x[i:i + 4]))) for i in (0, 4)])
    evaluation = model.evaluate(x, y, batch_size=4, return_dict=True, verbose=0)  # last batch: 1 sample
    assert evaluation["dcor"] == pytest.approx(expected, abs=1e-5)
    assert model.predict(x[:1], verbose=0).shape == (1, 10)


def test_training_lowers_dcor_with_nopeek():
    x, y = _batch((28, 28, 1), n=32)
    values = {}
    for alpha in (0.0, 5.0):
        keras.utils.set_random_seed(0)
        split = models.build_split_model("mnist_cnn", (28, 28, 1), 10, alpha=alpha)
        split.full.compile(optimizer=keras.optimizers.Adam(1e-2),
                           loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        split.full.fit(x, y, batch_size=32, epochs=12, verbose=0)
        values[alpha] = float(distance_correlation(x, split.client(x)))
    assert values[5.0] < values[0.0] - 0.05, values


def test_saved_model_loads_with_the_layer_intact(tmp_path):
    split = models.build_split_model("resnet_small", (32, 32, 3), 10, cut="block1a", alpha=4.0)
    model = _compiled(split)
    x, y = _batch((32, 32, 3), n=8)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.get_layer(models.NOPEEK_NAME)) is models.NoPeekLayer
    assert models.nopeek_alpha(loaded) == 4.0
    halves = models.split_halves(loaded)
    np.testing.assert_allclose(halves.server(halves.client(x)).numpy(), model.predict(x, verbose=0), atol=1e-5)
    assert "dcor" in loaded.evaluate(x, y, return_dict=True, verbose=0)


def test_keras_files_saved_with_the_old_layer_name_still_load():
    """testdata/distance_correlation_loss_v1.keras was saved by the code before the layer's rename
    (mnist_cnn on 4x4 images, client width 0.25, alpha 2; the logits of 3 seeded images beside it)."""
    folder = os.path.join(os.path.dirname(__file__), "testdata")
    with open(os.path.join(folder, "distance_correlation_loss_v1.keras"), "rb") as f:
        assert b"nopeek_tf>DistanceCorrelationLoss" in f.read()
    loaded = keras.models.load_model(os.path.join(folder, "distance_correlation_loss_v1.keras"))
    assert isinstance(loaded.get_layer(models.NOPEEK_NAME), models.NoPeekLayer)
    assert models.nopeek_alpha(loaded) == 2.0
    x = np.random.default_rng(0).uniform(size=(3, 4, 4, 1)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0),
                               np.load(os.path.join(folder, "distance_correlation_loss_v1_logits.npy")), atol=1e-6)


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="unknown architecture 'vgg'"):
        models.build_split_model("vgg", (28, 28, 1), 10)
    with pytest.raises(ValueError, match="unknown cut 'conv9'.*conv1, conv2"):
        models.build_split_model("mnist_cnn", (28, 28, 1), 10, cut="conv9")
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        models.build_split_model("mnist_cnn", (28, 28, 1), 10, alpha=-1)


def test_alpha_schedule_warms_up_then_ramps_per_step():
    schedule = models.AlphaSchedule(warmup_epochs=1, ramp_epochs=2)
    assert [schedule.scale_at(e) for e in (0, 0.99, 1, 2, 3, 10)] == [0.0, 0.0, 0.0, 0.5, 1.0, 1.0]
    assert models.AlphaSchedule().scale_at(0) == 1.0

    class Recorder(keras.callbacks.Callback):  # runs after the schedule: sees the scale each step trains with
        seen = []

        def on_train_batch_begin(self, batch, logs=None):
            self.seen.append(float(self.model.get_layer(models.NOPEEK_NAME).alpha_scale.numpy()))

    split = models.build_split_model("mnist_cnn", (28, 28, 1), 10, alpha=2.0)
    model = _compiled(split)
    x, y = _batch((28, 28, 1), n=16)
    model.fit(x, y, batch_size=4, epochs=3, verbose=0, shuffle=False,
              callbacks=[models.AlphaSchedule(warmup_epochs=1, ramp_epochs=1), Recorder()])
    assert Recorder.seen == [0.0] * 4 + [0.0, 0.25, 0.5, 0.75] + [1.0] * 4
    # The loss trains with the scale in force: with scale 0 the NoPeek layer adds 0.
    split.full.get_layer(models.NOPEEK_NAME).alpha_scale.assign(0.0)
    split.full(x, training=True)
    assert float(split.full.losses[0]) == 0.0


def test_activation_noise_is_relative_always_on_and_saved(tmp_path):
    split = models.build_split_model("mnist_cnn", (28, 28, 1), 10, noise="uniform", noise_scale=0.5)
    x, y = _batch((28, 28, 1), n=8)
    clean = split.client.predict(x, verbose=0)
    sent = split.sent_activations(x)
    noise = sent - clean
    ratio = noise.reshape(8, -1).std(axis=1) / clean.reshape(8, -1).std(axis=1)
    np.testing.assert_allclose(ratio, 0.5, rtol=0.05)  # per sample, relative to its own spread
    sent_tensor = split.send(x).numpy()
    assert sent_tensor.shape == clean.shape and not np.allclose(sent_tensor, clean)
    assert models.build_split_model("mnist_cnn", (28, 28, 1), 10).send(x).numpy().shape == clean.shape
    limit = 0.5 * np.sqrt(3) * clean.reshape(8, -1).std(axis=1)
    assert np.all(np.abs(noise.reshape(8, -1)) <= limit[:, None] * 1.0001)
    model = _compiled(split)
    # Always on: two inference calls differ (the device adds it too), unlike a Keras GaussianNoise layer.
    assert not np.allclose(model.predict(x, verbose=0), model.predict(x, verbose=0))
    path = os.path.join(tmp_path, "noisy.keras")
    model.save(path)
    loaded = models.split_halves(keras.models.load_model(path))
    assert (loaded.noise.kind, loaded.noise.scale) == ("uniform", 0.5)
    assert models.split_halves(models.build_split_model("mnist_cnn", (28, 28, 1), 10).full).noise is None
    with pytest.raises(ValueError, match="--noise must be one of"):
        models.build_split_model("mnist_cnn", (28, 28, 1), 10, noise="laplace", noise_scale=1.0)
