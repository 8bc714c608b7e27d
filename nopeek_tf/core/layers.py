"""The layers of a NoPeek split model: the NoPeek layer (dCor via ``add_loss``), the noise the device adds,
the noise baseline, and the schedule that warms their weight up.

``nopeek_tf.core.models`` assembles them into split models.
"""

from __future__ import annotations

import threading

import keras
import tensorflow as tf

from nopeek_tf.core.dcor import distance_correlation

CLIENT_NAME = "client"
SERVER_NAME = "server"
NOPEEK_NAME = "nopeek"
NOISE_NAME = "noise"
DEVICE_NOISE_NAME = "device_noise"
BOTTLENECK_NAME = "bottleneck"
BOUNDED_NAME = "bottleneck_tanh"
DCOR_METRIC_NAME = "dcor"


@keras.saving.register_keras_serializable(package="nopeek_tf")
class NoPeekLayer(keras.layers.Layer):
    """Identity on the activations that adds ``alpha * dCor(raw, activations)``.

    Called on ``[raw_input, activations]``; returns ``activations`` unchanged.
    In training (``training=True``) it adds the weighted distance correlation
    with ``add_loss``. In training and evaluation it updates the mean metric
    ``dcor`` (shown by ``fit``/``evaluate`` and written to TensorBoard). A batch
    of one sample has no dCor: it adds nothing and does not count in the metric.

    Args:
      alpha: weight of the dCor term; 0 only measures. :class:`AlphaSchedule`
        can warm it up during training.
    """

    def __init__(self, alpha: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)
        # The share of alpha in force now (1 unless an AlphaSchedule warms it up).
        self.alpha_scale = self.add_weight(shape=(), initializer="ones", trainable=False, name="alpha_scale")
        self.dcor_tracker = keras.metrics.Mean(name=DCOR_METRIC_NAME)
        self._loss_threads: dict[int, int] = {}
        self._last_dcor: dict[int, tuple[tf.Tensor, tf.Tensor]] = {}

    def batch_dcor(self, raw: tf.Tensor, activations: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Returns (dCor of the batch in float32, 1.0 if the batch has >= 2 samples else 0.0).

        Under a ``tf.distribute`` strategy with several replicas, the batch is the
        global batch: raw inputs and activations are gathered from all replicas,
        so every replica computes the same dCor. The gradient of the gather sums
        the replicas' upstream gradients, and Keras divides each replica's loss by
        the replica count, so the summed gradients equal the single-device ones.
        """
        raw = tf.cast(raw, tf.float32)
        activations = tf.cast(activations, tf.float32)
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            raw = context.all_gather(raw, axis=0)
            activations = context.all_gather(activations, axis=0)
        static_size = activations.shape[0]
        if static_size is not None:
            if static_size < 2:
                return tf.zeros([], tf.float32), tf.zeros([], tf.float32)
            return distance_correlation(raw, activations), tf.ones([], tf.float32)
        has_pairs = tf.shape(activations)[0] >= 2
        value = tf.cond(
            has_pairs,
            lambda: distance_correlation(raw, activations),
            lambda: tf.zeros([], tf.float32),
        )
        return value, tf.cast(has_pairs, tf.float32)

    def call(self, inputs, training=None):
        raw, activations = inputs
        value, weight = self.batch_dcor(raw, activations)
        if training and self.alpha > 0:
            loss = self.alpha * self.alpha_scale * value * weight
            self.add_loss(loss)
            self._loss_threads[id(loss)] = threading.get_ident()
        self._last_dcor[threading.get_ident()] = (value, weight)
        if not tf.distribute.in_cross_replica_context() or not tf.distribute.has_strategy():
            self.dcor_tracker.update_state(value, sample_weight=weight)
        return activations

    def last_dcor(self) -> tuple[tf.Tensor, tf.Tensor]:
        """(dCor, weight) of this layer's last call in the calling thread (a replica's, under a strategy).

        The custom training loop (:mod:`nopeek_tf.training.loop`) reads the dCor metric here;
        ``fit`` reads the ``dcor`` metric that the same call updates.
        """
        return self._last_dcor[threading.get_ident()]

    # MirroredStrategy runs the replicas in threads that share this layer, and
    # Keras keeps added losses in one list per layer: without this filter, replica
    # r would also count the dCor losses that replicas 0..r-1 added. These
    # override private Keras methods (Keras is pinned in requirements.txt;
    # tests/private_hooks_test.py fails when they disappear).
    def _get_own_losses(self):
        losses = super()._get_own_losses()
        thread = threading.get_ident()
        return [loss for loss in losses if self._loss_threads.get(id(loss)) in (thread, None)]

    def _clear_losses(self):
        super()._clear_losses()
        thread = threading.get_ident()
        self._loss_threads = {key: owner for key, owner in self._loss_threads.items() if owner != thread}

    def compute_output_spec(self, inputs, training=None):
        return keras.KerasTensor(inputs[1].shape, dtype=inputs[1].dtype)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}


@keras.saving.register_keras_serializable(package="nopeek_tf")
class DistanceCorrelationLoss(NoPeekLayer):
    """The old name of :class:`NoPeekLayer` (it is a layer, not a loss): ``.keras`` files saved with it still load."""


@keras.saving.register_keras_serializable(package="nopeek_tf")
class ActivationNoise(keras.layers.Layer):
    """Adds noise to each sample's activations, in training and at inference (the noise baseline).

    The noise is relative to the sample's own spread: ``scale * std(z_i) * eps``
    with ``eps`` standard Gaussian or uniform on [-sqrt(3), sqrt(3)] (also unit
    variance). Being relative, the client cannot learn to drown it by scaling
    its activations up, and a device can add it to one sample alone.

    Args:
      kind: "gaussian" or "uniform".
      scale: noise-to-signal ratio of standard deviations.
    """

    KINDS = ("gaussian", "uniform")

    def __init__(self, kind: str = "gaussian", scale: float = 1.0, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if kind not in self.KINDS:
            raise ValueError(f"noise kind must be one of {', '.join(self.KINDS)}, got {kind!r}")
        if scale < 0:
            raise ValueError(f"noise scale must be >= 0, got {scale}")
        self.kind, self.scale, self.seed = kind, float(scale), seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, activations):
        axes = list(range(1, len(activations.shape)))
        spread = keras.ops.stop_gradient(keras.ops.std(activations, axis=axes, keepdims=True))
        if self.kind == "gaussian":
            eps = keras.random.normal(keras.ops.shape(activations), seed=self.seed_generator)
        else:
            limit = 3.0 ** 0.5
            eps = keras.random.uniform(keras.ops.shape(activations), -limit, limit, seed=self.seed_generator)
        return activations + self.scale * spread * keras.ops.cast(eps, activations.dtype)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "scale": self.scale, "seed": self.seed}


@keras.saving.register_keras_serializable(package="nopeek_tf")
class DeviceNoise(keras.layers.Layer):
    """What the device does to a bounded client's activations: clip to [-clip, clip], add Gaussian noise.

    ``clip(z, -clip, clip) + stddev * eps``, eps standard Gaussian, in training and at inference, so
    that the server half learns to classify what the device sends. Unlike :class:`ActivationNoise` the
    noise is absolute: with values bounded by ``clip``, it bounds the bits one request carries
    (:mod:`nopeek_tf.device.bound`). The exported client ``.tflite`` holds no noise: the edge client adds
    it with a generator seeded by the operating system. ``noise_scale`` (1 unless a
    :class:`AlphaSchedule` for this layer ramps it up) scales the noise in training only; evaluation
    always adds the full noise.

    Args:
      stddev: the noise's standard deviation.
      clip: the bound on each value.
    """

    def __init__(self, stddev: float = 0.0, clip: float = 1.0, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if stddev < 0 or clip <= 0:
            raise ValueError(f"device noise needs stddev >= 0 and clip > 0, got {stddev} and {clip}")
        self.stddev, self.clip, self.seed = float(stddev), float(clip), seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.noise_scale = self.add_weight(shape=(), initializer="ones", trainable=False, name="noise_scale")

    def call(self, activations, training=None):
        bounded = keras.ops.clip(activations, -self.clip, self.clip)
        eps = keras.ops.cast(keras.random.normal(keras.ops.shape(activations), seed=self.seed_generator),
                             activations.dtype)
        stddev = self.stddev * keras.ops.cast(self.noise_scale, activations.dtype) if training else self.stddev
        return bounded + stddev * eps

    def get_config(self):
        return {**super().get_config(), "stddev": self.stddev, "clip": self.clip, "seed": self.seed}


class AlphaSchedule(keras.callbacks.Callback):
    """Warms the NoPeek weight up: 0 for ``warmup_epochs``, then linear to alpha over ``ramp_epochs``.

    Updated every training step from the optimizer's step count, so a resumed
    run continues the schedule where it stopped. With ``layer=DEVICE_NOISE_NAME``
    and ``weight="noise_scale"`` it ramps the device's noise up the same way.

    Args:
      warmup_epochs: epochs (may be fractional) trained on the task loss alone.
      ramp_epochs: epochs over which alpha then rises linearly to its full value.
      layer: the full model's layer that holds the scale.
      weight: the attribute of that layer holding the scale variable.
    """

    def __init__(self, warmup_epochs: float = 0.0, ramp_epochs: float = 0.0, layer: str = NOPEEK_NAME,
                 weight: str = "alpha_scale"):
        super().__init__()
        if warmup_epochs < 0 or ramp_epochs < 0:
            raise ValueError("warm-up and ramp epochs must be >= 0")
        self.warmup_epochs, self.ramp_epochs = warmup_epochs, ramp_epochs
        self.layer, self.weight = layer, weight
        self._last = None
        self._epoch = 0

    def scale_at(self, epoch: float) -> float:
        """The share of alpha in force at a (fractional) epoch."""
        if epoch < self.warmup_epochs:
            return 0.0
        if self.ramp_epochs == 0:
            return 1.0
        return min(1.0, (epoch - self.warmup_epochs) / self.ramp_epochs)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def apply(self, full: keras.Model, epoch: float) -> None:
        """Puts the share of alpha at ``epoch`` in force in ``full``'s NoPeek layer (assigned only on change)."""
        scale = self.scale_at(epoch)
        if scale != self._last:
            getattr(full.get_layer(self.layer), self.weight).assign(scale)
            self._last = scale

    def on_train_batch_begin(self, batch, logs=None):
        steps = self.params.get("steps")
        # Unknown epoch length: whole-epoch granularity.
        self.apply(self.model, int(self.model.optimizer.iterations.numpy()) / steps if steps else self._epoch)
