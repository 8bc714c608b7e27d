"""The settings of a training run: :class:`TrainConfig`, composed of typed parts.

The parts: :class:`DataSettings` (``config.data``), :class:`NetworkSettings` (``config.network``),
:class:`Defence` (``config.protection``: what the model builders take), :class:`OptimisationSettings`
(``config.optimisation``), :class:`DistributionSettings` (``config.distribution``) and
:class:`ReportingSettings` (``config.reporting``). Every setting keeps its one flat name: the flag
(``--alpha``), the key of ``config.json`` and the keyword (``TrainConfig(alpha=1)``,
``config.replace(alpha=1)``, ``config.alpha``) are the same, so config.json files of earlier versions
load as they are. A new training flag is one new field of a part: it appears in ``train.train``, in
``train.sweep`` (unless the sweep varies it per run) and in ``config.json``.

No TensorFlow here: the checks that need the network (its cut, a keras.applications name) are the
runner's (:func:`nopeek_tf.training.runner.resolve_config`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from typing import Any

from nopeek_tf.config.settings import ConfigError, Settings, check, field_names, setting

STRATEGIES = ("default", "mirrored", "multi_worker")
NOISE_KINDS = ("none", "gaussian", "uniform")
DEFENCES = ("recommended", "plain")
# The defence settings: give any of them on the command line and the recommendation steps aside.
# An unset NoPeek warm-up and ramp each take this share of --epochs: measured on a small residual model of a
# user's (alpha 1 from the first step: at chance, 0.333 on 3 classes; with the warm-up 0.78, against 0.79 at alpha 0)
# and on the built-in networks (docs/your_model.md, "NoPeek's warm-up").
AUTO_WARMUP_SHARE = 0.2
DEFENCE_FIELDS = ("cut", "client_width", "bottleneck", "alpha", "alpha_warmup_epochs", "alpha_ramp_epochs",
                  "adversary_weight", "adversary_ssim_threshold", "adversary_label_aware", "adversary_width",
                  "noise", "noise_scale", "bounded", "device_noise", "device_noise_warmup_epochs",
                  "device_noise_ramp_epochs")
# The protective defence measured for each offline dataset (README, "Leakage: the frontier"): train.train
# uses it unless --defence=plain or a defence flag is given.
RECOMMENDED_DEFENCE: dict[str, dict[str, Any]] = {
    "fashion_mnist": dict(cut="dense", bottleneck=4, bounded=True, device_noise=0.26, alpha=0.0),
    "orl_faces": dict(cut="dense", bottleneck=32, bounded=True, device_noise=0.5, alpha=0.0),
}
# (epochs, batch size) when --epochs/--batch_size are 0: each offline dataset's default run takes minutes on a
# laptop CPU (fashion_mnist: the recommended defence was measured at these; orl_faces: the quick start's).
DATASET_DEFAULTS: dict[str, tuple[int, int]] = {
    "fashion_mnist": (2, 128), "mnist": (2, 128), "orl_faces": (40, 32), "folder": (20, 32)}
OTHER_DATASET_DEFAULTS = (10, 128)
BUILT_IN_ARCHITECTURES = ("mnist_cnn", "orl_cnn", "resnet_small")  # nopeek_tf.core.models.ARCHITECTURES
DEFAULT_ARCH_FOR_DATASET = {"orl_faces": "orl_cnn", "fashion_mnist": "mnist_cnn", "mnist": "mnist_cnn"}


@dataclasses.dataclass(frozen=True)
class DataSettings(Settings):
    """The data: which dataset, where, at what size."""

    dataset: str = setting("orl_faces", "orl_faces (offline, default), fashion_mnist (offline from Debian's "
                           "dataset-fashion-mnist or --data_dir), folder (your images: --data_dir=DIR with "
                           "DIR/<class>/<image>), or any TFDS name (needs internet).")
    data_dir: str | None = setting(None, "For folder: DIR/<class>/<image> (PNG, JPEG, BMP, GIF), or DIR/train/... "
                                   "and DIR/test/.... For fashion_mnist/mnist: a folder of MNIST-format idx files. "
                                   "For TFDS names: the TFDS data dir.")
    image_size: tuple[int, int] | None = setting(None, "Resize images to HEIGHTxWIDTH (e.g. 56x46 for ORL at "
                                                 "half size; default: --model_file's input size, else the data's).")
    channels: int = setting(0, "1 (grey) or 3 (RGB: grey images are replicated); 0: --model_file's, else the "
                            "data's.", minimum=0)
    test_fraction: float = setting(0.2, "For --dataset=folder without DIR/train and DIR/test: the share of each "
                                   "class held out for testing (a fixed seed).", above=0)


@dataclasses.dataclass(frozen=True)
class NetworkSettings(Settings):
    """The network and where it is cut."""

    arch: str = setting("auto", "Architecture: auto (by dataset), mnist_cnn, orl_cnn, resnet_small, or a "
                        "keras.applications network by name (MobileNetV2, MobileNetV3Small, EfficientNetB0, ...: "
                        "random weights, the data's shape and classes).")
    arch_options: tuple[str, ...] | None = setting(None, "Options of a keras.applications --arch, NAME=VALUE "
                                                   "comma-separated (e.g. alpha=0.35).")
    model_file: str | None = setting(None, "Your own saved Keras model (.keras; functional or Sequential, image in, "
                                     "class scores out) to split at --cut and train with NoPeek; its weights are "
                                     "the start. Replaces --arch.")
    cut: str = setting("auto", "The last block (built-in --arch) or layer (--model_file, keras.applications) on "
                       "the client (auto: the architecture's default; for other models the valid cut with the "
                       "most client FLOPs up to half). python -m train.train --list_cuts lists them.", swept=True)


@dataclasses.dataclass(frozen=True)
class Defence(Settings):
    """What protects the activations the client sends: NoPeek's dCor, the bounded bottleneck and the device's
    noise, attacker-aware training, the noise baseline. The model builders take it whole
    (:func:`nopeek_tf.core.models.build_split_model`, :func:`nopeek_tf.core.split.split_model`)."""

    defence: str = setting("plain", "recommended: for orl_faces and fashion_mnist, when no defence flag (--cut, "
                           "--bottleneck, --alpha*, --adversary_*, --noise*, --client_width) is given, train the "
                           "protective defence measured for the dataset (nopeek_tf.config.RECOMMENDED_DEFENCE; "
                           "README, Leakage); plain: every flag's own default.", choices=DEFENCES, swept=True,
                           flag_default="recommended")
    client_width: float = setting(1.0, "Multiply the filters and units of the client's blocks by this (e.g. 0.25 "
                                  "narrows what the client sends; the server keeps its width).", above=0)
    bottleneck: int = setting(0, "End the client with a linear layer to this many channels (a 1x1 convolution; "
                              "units after a dense cut): the device sends fewer values (0: none).", minimum=0)
    alpha: float = setting(1.0, "Weight of the NoPeek loss alpha * dCor(image, activations); 0 disables it.",
                           minimum=0, swept=True)
    alpha_warmup_epochs: float | None = setting(None, "Train this many epochs (may be fractional) with alpha 0 "
                                                "first. Default: 20% of --epochs when --alpha > 0, so that the task "
                                                "starts before NoPeek's term can swamp it; 0: from the first step.",
                                                minimum=0, resumable=True)  # the default follows --epochs
    alpha_ramp_epochs: float | None = setting(None, "Then raise alpha linearly to --alpha over this many epochs. "
                                              "Default: 20% of --epochs when --alpha > 0.", minimum=0, resumable=True)
    adversary_weight: float = setting(0.0, "Attacker-aware training: weight of the penalty on a decoder trained "
                                      "alongside (its SSIM above --adversary_ssim_threshold); 0: off.", minimum=0,
                                      swept=True)
    adversary_ssim_threshold: float = setting(0.4, "The in-loop decoder's SSIM that the client is not penalised "
                                              "below (set it near the label-only floor).", minimum=0)
    adversary_label_aware: bool = setting(False, "The in-loop decoder also gets the class (as the class-mean "
                                          "image), as a server that sees the predictions can.")
    adversary_width: int = setting(32, "Filters of the in-loop decoder.", minimum=1)
    noise: str = setting("none", "Noise baseline: add gaussian or uniform noise to the activations the client "
                         "sends (training and inference).", choices=NOISE_KINDS, swept=True)
    noise_scale: float = setting(0.0, "Noise std relative to each sample's activation std.", minimum=0, swept=True)
    bounded: bool = setting(False, "End the --bottleneck in tanh, so that every value the device sends lies in "
                            "[-1, 1] (the bound in bits needs it).")
    device_noise: float = setting(0.0, "The device adds Gaussian noise of this standard deviation to each bounded "
                                  "value it sends (needs --bounded; trained with it; the edge client draws it). One "
                                  "request then reveals at most k/2*log2(1+1/s^2) bits for k values (bound_bits).",
                                  minimum=0)
    device_noise_warmup_epochs: float = setting(0.0, "Train this many epochs (may be fractional) without the "
                                                "device noise first.", minimum=0)
    device_noise_ramp_epochs: float = setting(0.0, "Then raise the device noise linearly to --device_noise over "
                                              "this many epochs.", minimum=0)

    def validate(self) -> None:
        """Checks every field and the rules between them; raises ConfigError naming the flag."""
        check(self)
        self.check_rules()

    def check_rules(self) -> None:
        """The rules between the defence's settings (ConfigError naming the flag)."""
        if (self.noise != "none") != (self.noise_scale > 0):
            raise ConfigError("--noise_scale must be > 0 with --noise=gaussian/uniform, and 0 with --noise=none")
        if self.bounded and not self.bottleneck:
            raise ConfigError("--bounded needs --bottleneck=K (the tanh ends the bottleneck)")
        if self.device_noise and not self.bounded:
            raise ConfigError("--device_noise needs --bounded (the bound holds for values in [-1, 1])")
        if self.device_noise and self.noise != "none":
            raise ConfigError("--device_noise replaces the --noise baseline: give one of them")
        if (self.device_noise_warmup_epochs or self.device_noise_ramp_epochs) and not self.device_noise:
            raise ConfigError("--device_noise_warmup_epochs and --device_noise_ramp_epochs need --device_noise")

    @property
    def noise_baseline(self) -> tuple[str, float] | None:
        """(kind, scale) of the noise baseline, or None."""
        return (self.noise, self.noise_scale) if self.noise != "none" else None


@dataclasses.dataclass(frozen=True)
class OptimisationSettings(Settings):
    """How the weights are trained."""

    epochs: int = setting(0, "Training epochs (in total, counting epochs of a resumed run); 0: the dataset's "
                          "default (nopeek_tf.config.DATASET_DEFAULTS: minutes on a laptop CPU).", minimum=0,
                          resumable=True)
    batch_size: int = setting(0, "Batch size (global); dCor is computed over each batch. 0: the dataset's "
                              "default.", minimum=0)
    learning_rate: float = setting(1e-3, "Adam learning rate.", above=0)
    seed: int = setting(0, "Random seed (weights, shuffling).")
    mixed_precision: bool = setting(False, "Train with the mixed_float16 policy (GPUs); dCor stays float32.")


@dataclasses.dataclass(frozen=True)
class DistributionSettings(Settings):
    """Where training runs: the tf.distribute strategy and its devices."""

    strategy: str = setting("default", "tf.distribute strategy: default (one device), mirrored (the local GPUs, "
                            "or --devices), multi_worker (MultiWorkerMirroredStrategy from TF_CONFIG).",
                            choices=STRATEGIES, resumable=True)
    devices: tuple[str, ...] | None = setting(None, "For mirrored: the devices, e.g. /gpu:0,/gpu:1 (default: all "
                                              "GPUs, or all logical CPUs when there is no GPU).", resumable=True)
    peer_timeout_seconds: float = setting(300.0, "For multi_worker: end with an error if the workers of TF_CONFIG "
                                          "have not all connected and run a first step within this time.",
                                          above=0, resumable=True)
    cpu_devices: int = setting(0, "Split the CPU into this many logical devices (develop and test tf.distribute "
                               "without GPUs).", minimum=0, resumable=True)


@dataclasses.dataclass(frozen=True)
class ReportingSettings(Settings):
    """What training measures and prints besides the task."""

    dcor_batch_size: int = setting(100, "Batch size of the test dCor (a batch statistic).", minimum=2)
    leakage_images: int = setting(0, "Log the test dCor and a quick attack's SSIM on this many test images to "
                                  "TensorBoard every epoch (0: off).", minimum=0, resumable=True)
    strict: bool = setting(False, "A model whose test accuracy ends at chance is an error (exit 1; its model dir is "
                           "still written, marked collapsed) rather than a warning.", resumable=True)
    reference_accuracy: float = setting(0.0, "The test accuracy the same model reaches without the defence, if "
                                        "known (e.g. from an --alpha=0 run): ending more than 0.2 below it is "
                                        "caught like ending at chance (0: unknown).", minimum=0, resumable=True)
    verbose: int = setting(2, "Keras fit verbosity.", flag=False, saved=False)


_PARTS: dict[str, type] = {"data": DataSettings, "network": NetworkSettings, "protection": Defence,
                           "optimisation": OptimisationSettings, "distribution": DistributionSettings,
                           "reporting": ReportingSettings}
_PART_FIELDS: dict[str, tuple[str, ...]] = {part: tuple(field_names(part_class)) for part, part_class in _PARTS.items()}
_OWNER: dict[str, str] = {name: part for part, names in _PART_FIELDS.items() for name in names}


@dataclasses.dataclass(frozen=True, init=False)
class TrainConfig(Settings):
    """Everything that defines a training run (``python -m train.train``), in typed parts.

    Build it from flat settings, ``TrainConfig(dataset="folder", data_dir="photos/", alpha=1.0)``, from
    parts, ``TrainConfig(protection=Defence(alpha=1.0))``, or both (flat settings apply over the parts).
    Each setting reads by its flat name too: ``config.alpha is config.protection.alpha``.
    """

    data: DataSettings
    network: NetworkSettings
    protection: Defence
    optimisation: OptimisationSettings
    distribution: DistributionSettings
    reporting: ReportingSettings

    def __init__(self, **values: Any):
        unknown = sorted(set(values) - set(_PARTS) - set(_OWNER))
        if unknown:
            raise TypeError(f"TrainConfig has no setting {', '.join(unknown)}")
        for part, part_class in _PARTS.items():
            value = values.get(part, part_class())
            if not isinstance(value, part_class):
                raise TypeError(f"TrainConfig's {part} must be a {part_class.__name__}, got {type(value).__name__}")
            own = {name: values[name] for name in _PART_FIELDS[part] if name in values}
            object.__setattr__(self, part, dataclasses.replace(value, **own) if own else value)

    def __getattr__(self, name: str) -> Any:
        part = _OWNER.get(name)
        if part is None:
            raise AttributeError(f"TrainConfig has no setting {name!r}")
        return getattr(object.__getattribute__(self, part), name)

    def replace(self, **values: Any) -> "TrainConfig":
        """A copy with some settings changed (flat names or whole parts)."""
        return dataclasses.replace(self, **values)

    def validate(self) -> None:
        """Checks every field and the rules between fields; raises ConfigError naming the flag."""
        check(self)
        self.protection.check_rules()
        if self.batch_size == 1:
            raise ConfigError("--batch_size must be at least 2 (dCor is computed over pairs), or 0 for the dataset's "
                              "default, got 1")
        if self.leakage_images == 1:
            raise ConfigError("--leakage_images must be 0 (off) or at least 2, got 1")
        if self.devices and self.strategy != "mirrored":
            raise ConfigError("--devices is for --strategy=mirrored")
        if self.strategy == "multi_worker" and "TF_CONFIG" not in os.environ:
            raise ConfigError("--strategy=multi_worker needs the TF_CONFIG environment variable (see the README)")
        if self.channels not in (0, 1, 3):
            raise ConfigError(f"--channels must be 1 (grey), 3 (RGB) or 0 (from the model or data), "
                              f"got {self.channels}")
        if self.test_fraction >= 1:
            raise ConfigError(f"--test_fraction must be between 0 and 1, got {self.test_fraction:g}")
        if self.dataset == "folder" and not self.data_dir:
            raise ConfigError("--dataset=folder needs --data_dir=DIR (DIR/<class>/<image>, or DIR/train and DIR/test)")
        if self.model_file:
            if self.arch != "auto":
                raise ConfigError("--model_file replaces --arch: give one of them")
            if not os.path.isfile(self.model_file):
                raise ConfigError(f"--model_file {self.model_file}: no such file")
            if self.client_width != 1:
                raise ConfigError("--client_width needs a built-in --arch; with --model_file, use --bottleneck")
        if self.arch_options and not self.model_file and self.arch in ("auto", *BUILT_IN_ARCHITECTURES):
            raise ConfigError("--arch_options are for a keras.applications --arch (e.g. --arch=MobileNetV2 "
                              "--arch_options=alpha=0.35)")
        if self.arch not in ("auto", *BUILT_IN_ARCHITECTURES) and self.client_width != 1:
            raise ConfigError(f"--client_width needs a built-in --arch ({', '.join(BUILT_IN_ARCHITECTURES)}); "
                              "use --bottleneck")

    def with_dataset_defaults(self) -> "TrainConfig":
        """Replaces epochs and batch size 0 with the dataset's defaults (:data:`DATASET_DEFAULTS`), and an unset
        NoPeek warm-up and ramp with :data:`AUTO_WARMUP_SHARE` of the epochs each (none at alpha 0)."""
        epochs, batch_size = DATASET_DEFAULTS.get(self.dataset, OTHER_DATASET_DEFAULTS)
        epochs = self.epochs or epochs
        auto = round(AUTO_WARMUP_SHARE * epochs, 4) if self.alpha > 0 else 0.0
        return self.replace(epochs=epochs, batch_size=self.batch_size or batch_size,
                            alpha_warmup_epochs=auto if self.alpha_warmup_epochs is None else self.alpha_warmup_epochs,
                            alpha_ramp_epochs=auto if self.alpha_ramp_epochs is None else self.alpha_ramp_epochs)

    @property
    def user_model(self) -> bool:
        """True when the network is not a built-in architecture: --model_file or a keras.applications --arch."""
        return bool(self.model_file) or self.arch not in ("auto", *BUILT_IN_ARCHITECTURES)

    def with_defence(self, given: Iterable[str] | None = None) -> "TrainConfig":
        """Applies the dataset's recommended defence if ``defence`` is "recommended" and no defence setting was given.

        Args:
          given: the settings given on the command line; None: those that differ from their defaults.

        Returns:
          The config with the recommendation's settings, or with ``defence="plain"`` when a defence
          setting was given or the dataset has no measured recommendation. Applying it twice changes nothing.
        """
        recommended = RECOMMENDED_DEFENCE.get(self.dataset)
        if self.defence != "recommended" or recommended is None or self.user_model or self.arch not in (
                "auto", DEFAULT_ARCH_FOR_DATASET.get(self.dataset)):
            return self.replace(defence="plain")
        if all(getattr(self, name) == value for name, value in recommended.items()):
            return self
        defaults = type(self)()
        given = set(given) if given is not None else {
            name for name in DEFENCE_FIELDS if getattr(self, name) != getattr(defaults, name)}
        if given & set(DEFENCE_FIELDS):
            return self.replace(defence="plain")
        return self.replace(**recommended)

    def defence_summary(self) -> str:
        """One line: the recommended defence this config trains, or how to get it."""
        recommended = RECOMMENDED_DEFENCE.get(self.dataset)
        if self.user_model:
            return ("defence: as given (a measured recommendation exists only for the built-in architectures; "
                    "docs/your_model.md has MobileNetV2's)")
        if recommended is None:
            return f"defence: no measured recommendation for {self.dataset}; training the flags as given"
        flags_text = " ".join(flag_text(name, value) for name, value in recommended.items())
        if self.defence == "recommended":
            return (f"defence: the recommended one for {self.dataset} ({flags_text}; README, Leakage); "
                    "--defence=plain trains the flags' own defaults")
        return f"defence: as given (the recommended one for {self.dataset}: {flags_text})"


def flag_text(name: str, value: Any) -> str:
    """A setting as its command-line flag: ``--alpha=3``, ``--adversary_label_aware``, ``--image_size=56x46``."""
    if value is True or value is False:
        return f"--{'' if value else 'no'}{name}"
    if isinstance(value, (list, tuple)):
        value = "x".join(str(part) for part in value) if name == "image_size" else ",".join(map(str, value))
    return f"--{name}={value:g}" if isinstance(value, float) else f"--{name}={value}"


def default_arch(dataset: str, image_shape: Sequence[int] | None = None) -> str | None:
    """The architecture for a dataset: by name, else by image shape (None if neither is known)."""
    if dataset in DEFAULT_ARCH_FOR_DATASET:
        return DEFAULT_ARCH_FOR_DATASET[dataset]
    if image_shape is None:
        return None
    return "mnist_cnn" if tuple(image_shape) == (28, 28, 1) else "resnet_small"
