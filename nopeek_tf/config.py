"""One source for every setting: dataclasses whose fields carry their flag's help and checks.

Each setting is written once, as a field made with :func:`setting`. From the
dataclass come the absl flags (:func:`define_flags`), the config read back from
the command line (:func:`from_flags`), the one-line checks (:func:`check`), and
the JSON written to ``config.json`` and ``metrics.json`` (:func:`to_json`). A new
training flag is one new field of :class:`TrainConfig`: it appears in
``train.train``, in ``train.sweep`` (unless the sweep varies it per run) and in
``config.json``.

This module does not import TensorFlow, so ``--help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any

STRATEGIES = ("default", "mirrored", "multi_worker")
NOISE_KINDS = ("none", "gaussian", "uniform")
DEFENCES = ("recommended", "plain")
# The defence settings: give any of them on the command line and the recommendation steps aside.
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
BUILT_IN_ARCHITECTURES = ("mnist_cnn", "orl_cnn", "resnet_small")  # nopeek_tf.models.ARCHITECTURES
DEFAULT_ARCH_FOR_DATASET = {"orl_faces": "orl_cnn", "fashion_mnist": "mnist_cnn", "mnist": "mnist_cnn"}


class ConfigError(ValueError):
    """A setting that cannot work; the message starts with the flag's name (``--alpha must be ...``)."""


def setting(default: Any, help: str, *, minimum: float | None = None, above: float | None = None,
            choices: Sequence[str] | None = None, why: str = "", resumable: bool = False, swept: bool = False,
            flag: bool = True, saved: bool = True, flag_default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field that is also a command-line flag.

    Args:
      default: the default value (immutable: numbers, strings, tuples, None).
      help: the flag's help text.
      minimum: the value must be >= this.
      above: the value must be > this.
      choices: the value must be one of these strings.
      why: a reason appended to a failed ``minimum``/``above`` check.
      resumable: a run may be resumed with another value (the rest must match config.json).
      swept: ``train.sweep`` sets it per run, so the sweep has no flag of its own for it.
      flag: False for fields that are not command-line flags.
      saved: False for fields left out of config.json (they do not define the run).
      flag_default: the flag's default when it differs from the field's (the library's) default.
    """
    return dataclasses.field(default=default, metadata=dict(
        help=help, minimum=minimum, above=above, choices=tuple(choices) if choices else None, why=why,
        resumable=resumable, swept=swept, flag=flag, saved=saved,
        flag_default=default if flag_default is dataclasses.MISSING else flag_default))


def parse_image_size(text: str | None) -> tuple[int, int] | None:
    """"56x46" -> (56, 46); None or "" -> None."""
    if not text:
        return None
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--image_size must look like HEIGHTxWIDTH (e.g. 56x46), got {text!r}") from None
    if height < 1 or width < 1:
        raise ConfigError(f"--image_size must be positive, got {text!r}")
    return height, width


class Settings:
    """Methods shared by the settings dataclasses."""

    def to_json(self) -> dict:
        """The saved fields as JSON-ready values (see :func:`to_json`)."""
        return to_json(self)

    def validate(self) -> None:
        """Checks every field; raises ConfigError naming the flag."""
        check(self)

    @classmethod
    def from_json(cls, values: dict):
        """The settings saved in a config.json or metrics.json (other keys ignored; missing ones default)."""
        names = {field.name: hint for field, hint in _fields(cls)}
        kept = {name: tuple(value) if isinstance(value, list) else value
                for name, value in values.items() if name in names}
        return cls(**kept)


@dataclasses.dataclass(frozen=True)
class TrainConfig(Settings):
    """Everything that defines a training run (``python -m train.train``; one field per flag)."""

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
    alpha_warmup_epochs: float = setting(0.0, "Train this many epochs (may be fractional) with alpha 0 first.",
                                         minimum=0)
    alpha_ramp_epochs: float = setting(0.0, "Then raise alpha linearly to --alpha over this many epochs.",
                                       minimum=0)
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
    epochs: int = setting(0, "Training epochs (in total, counting epochs of a resumed run); 0: the dataset's "
                          "default (nopeek_tf.config.DATASET_DEFAULTS: minutes on a laptop CPU).", minimum=0,
                          resumable=True)
    batch_size: int = setting(0, "Batch size (global); dCor is computed over each batch. 0: the dataset's "
                              "default.", minimum=0)
    learning_rate: float = setting(1e-3, "Adam learning rate.", above=0)
    seed: int = setting(0, "Random seed (weights, shuffling).")
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
    mixed_precision: bool = setting(False, "Train with the mixed_float16 policy (GPUs); dCor stays float32.")
    dcor_batch_size: int = setting(100, "Batch size of the test dCor (a batch statistic).", minimum=2)
    leakage_images: int = setting(0, "Log the test dCor and a quick attack's SSIM on this many test images to "
                                  "TensorBoard every epoch (0: off).", minimum=0, resumable=True)
    verbose: int = setting(2, "Keras fit verbosity.", flag=False, saved=False)

    def validate(self) -> None:
        """Checks every field and the rules between fields; raises ConfigError naming the flag."""
        check(self)
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
        if self.arch in BUILT_IN_ARCHITECTURES:
            from nopeek_tf.core import models  # imports TensorFlow: only when arch is named

            try:
                models.resolve_cut(self.arch, self.cut)
            except ValueError as error:
                raise ConfigError(f"--cut: {error}") from None
        elif self.arch != "auto":
            import keras  # imports TensorFlow: only when arch is named

            if self.arch[:1].islower() or not callable(getattr(keras.applications, self.arch, None)):
                raise ConfigError(f"--arch: unknown architecture {self.arch!r}; choose auto, one of "
                                  f"{', '.join(BUILT_IN_ARCHITECTURES)}, or a keras.applications network "
                                  "(MobileNetV2, MobileNetV3Small, EfficientNetB0, ...)")

    def with_dataset_defaults(self) -> "TrainConfig":
        """Replaces epochs and batch size 0 with the dataset's defaults (:data:`DATASET_DEFAULTS`)."""
        epochs, batch_size = DATASET_DEFAULTS.get(self.dataset, OTHER_DATASET_DEFAULTS)
        return dataclasses.replace(self, epochs=self.epochs or epochs, batch_size=self.batch_size or batch_size)

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
            return dataclasses.replace(self, defence="plain")
        if all(getattr(self, name) == value for name, value in recommended.items()):
            return self
        defaults = type(self)()
        given = set(given) if given is not None else {
            name for name in DEFENCE_FIELDS if getattr(self, name) != getattr(defaults, name)}
        if given & set(DEFENCE_FIELDS):
            return dataclasses.replace(self, defence="plain")
        return dataclasses.replace(self, **recommended)

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

    def with_arch(self, image_shape: Sequence[int]) -> "TrainConfig":
        """Replaces arch/cut "auto" with the dataset's default architecture and its default cut."""
        from nopeek_tf.core import models

        if self.user_model:
            return self
        arch = self.arch if self.arch != "auto" else default_arch(self.dataset, image_shape)
        try:
            cut = models.resolve_cut(arch, self.cut)
        except ValueError as error:
            raise ConfigError(f"--cut: {error}") from None
        return dataclasses.replace(self, arch=arch, cut=cut)


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


@dataclasses.dataclass(frozen=True)
class AttackBudget(Settings):
    """How hard each reconstruction attack tries (stated with every result)."""

    decoder_epochs: int = setting(10, "Most epochs of each decoder attack (stops early when converged).", minimum=1)
    decoder_batch_size: int = setting(64, "Batch size of the decoder attacks.", minimum=1)
    decoder_learning_rate: float = setting(1e-3, "Adam learning rate of the decoder attacks.", above=0)
    decoder_width: int = setting(32, "Filters of the decoder's convolutions.", minimum=1)
    leaked_fraction: float = setting(0.9, "Share of the test images whose (image, activation) pairs leak; the "
                                     "attacks are scored on the rest.", above=0)
    inversion_images: int = setting(32, "Scored images the inversion attack reconstructs.", minimum=1)
    inversion_steps: int = setting(500, "Adam steps of the inversion attack.", minimum=1)
    inversion_learning_rate: float = setting(0.05, "Adam learning rate of the inversion attack.", above=0)
    inversion_tv_weight: float = setting(0.02, "Weight of the inversion's total-variation prior.", minimum=0)

    def validate(self) -> None:
        """Checks every field; raises ConfigError naming the flag."""
        check(self)
        if self.leaked_fraction >= 1:
            raise ConfigError(f"--leaked_fraction must be between 0 and 1, got {self.leaked_fraction}")


@dataclasses.dataclass(frozen=True)
class EvaluationConfig(Settings):
    """Which images a leakage evaluation uses, and how the reconstructions are judged."""

    train_images: int = setting(0, "Training images the public-client attackers run the client on (0: the whole "
                                "training split, as anyone holding the public client can).", minimum=0)
    test_images: int = setting(2000, "Test images (leaked share + scored share).", minimum=1)
    recognizer_epochs: int = setting(5, "Epochs of the separate classifier that judges reconstructions.",
                                     minimum=1)
    attack_seed: int = setting(0, "Splits the test images into leaked and scored ones.")


# The default budget gives the public-client attackers the whole training split (data matters more than
# decoder width or epochs: docs/leakage.md, "What a full evaluation costs") and fits in an hour for one
# Fashion-MNIST model on 2 cores. The quick budget, for comparing many defences in one sweep (--quick),
# gives them 5,000 images and underestimates what the whole split reconstructs (by about 0.04 SSIM on the
# recommended Fashion-MNIST client of the last release), so headline figures use the defaults.
QUICK_BUDGET = AttackBudget(decoder_width=32, decoder_epochs=10, inversion_steps=300, inversion_images=32)
QUICK_EVALUATION = EvaluationConfig(train_images=5000, test_images=2000, recognizer_epochs=3)


# --- Deriving flags, checks and JSON from the fields ------------------------------------------

def _fields(config_class) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(config_class)
    return [(field, hints[field.name]) for field in dataclasses.fields(config_class)]


def _kind(hint) -> str:
    """"bool", "int", "float", "str", "size" (HEIGHTxWIDTH), "list" or "floats" (comma-separated)."""
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
    base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
    if typing.get_origin(base) is tuple:
        element = typing.get_args(base)
        return "size" if element == (int, int) else "floats" if element[0] is float else "list"
    return base.__name__


def flag_fields(config_class, include_swept: bool = True) -> list[str]:
    """The names of ``config_class``'s fields that are flags (without the swept ones if asked)."""
    return [field.name for field, _ in _fields(config_class)
            if field.metadata.get("flag", True) and (include_swept or not field.metadata.get("swept"))]


def define_flags(config_class, include_swept: bool = True, flag_values=None) -> None:
    """Defines an absl flag for each flag field of ``config_class``, with its default and help.

    Checks are not absl validators: :func:`check` raises one-line ConfigErrors
    after parsing, so that a bad value reads the same from a script and a test.
    A script shows them in ``--helpshort`` with ``flags.adopt_module_key_flags(nopeek_tf.config)``.
    """
    from absl import flags

    flag_values = flags.FLAGS if flag_values is None else flag_values
    definers = {"bool": flags.DEFINE_bool, "int": flags.DEFINE_integer, "float": flags.DEFINE_float,
                "str": flags.DEFINE_string, "size": flags.DEFINE_string, "list": flags.DEFINE_list,
                "floats": flags.DEFINE_list}
    fields = dict((field.name, (field, hint)) for field, hint in _fields(config_class))
    for name in flag_fields(config_class, include_swept):
        field, hint = fields[name]
        kind = _kind(hint)
        help_text = field.metadata["help"]
        if field.metadata.get("choices"):
            help_text += f" One of: {', '.join(field.metadata['choices'])}."
        default = field.metadata["flag_default"]
        if kind == "size" and default is not None:
            default = "x".join(str(part) for part in default)
        elif kind in ("list", "floats") and default is not None:
            default = [format(value, "g") if kind == "floats" else value for value in default]
        definers[kind](name, default, help_text, flag_values=flag_values)


def from_flags(config_class, base=None, flag_values=None, **overrides):
    """The ``config_class`` instance the parsed flags describe.

    Args:
      config_class: a dataclass whose fields were made with :func:`setting`.
      base: values for the flags not given on the command line (default: the
        fields' defaults): a sweep configuration module's settings, say.
      flag_values: absl FlagValues (default: absl.flags.FLAGS).
      **overrides: values for fields that are not flags.
    """
    from absl import flags

    flag_values = flags.FLAGS if flag_values is None else flag_values
    values = {}
    fields = {field.name: hint for field, hint in _fields(config_class)}
    for name in flag_fields(config_class):
        if name not in flag_values:
            continue
        flag = flag_values[name]
        if base is not None and not flag.present:
            values[name] = getattr(base, name)
            continue
        value = flag.value
        kind = _kind(fields[name])
        if kind == "size":
            value = parse_image_size(value)
        elif kind == "list":
            value = tuple(value) if value else None
        elif kind == "floats":
            value = _floats(name, value)
        values[name] = value
    return config_class(**values, **overrides) if base is None else dataclasses.replace(base, **values, **overrides)


def given_flags(config_class, flag_values=None) -> set[str]:
    """The flag fields of ``config_class`` given on the command line."""
    from absl import flags

    flag_values = flags.FLAGS if flag_values is None else flag_values
    return {name for name in flag_fields(config_class) if name in flag_values and flag_values[name].present}


def _floats(name: str, texts: Sequence[str] | None) -> tuple[float, ...]:
    try:
        return tuple(float(text) for text in texts or [])
    except ValueError:
        raise ConfigError(f"--{name} must be a comma-separated list of numbers, got {','.join(texts)!r}") from None


def check(config) -> None:
    """Checks each field of ``config`` against its ``minimum``, ``above`` and ``choices``."""
    for field, _ in _fields(type(config)):
        value = getattr(config, field.name)
        for item in value if isinstance(value, tuple) else [value]:
            _check_value(field.name, item, field.metadata)


def _check_value(name: str, value: Any, meta) -> None:
    why = f" ({meta['why']})" if meta.get("why") else ""
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"--{name} must be one of {', '.join(meta['choices'])}, got {value!r}")
    if meta.get("minimum") is not None and value < meta["minimum"]:
        bound = "at least" if isinstance(value, int) and meta["minimum"] > 0 else ">="
        raise ConfigError(f"--{name} must be {bound} {meta['minimum']:g}{why}, got {value:g}")
    if meta.get("above") is not None and value <= meta["above"]:
        raise ConfigError(f"--{name} must be > {meta['above']:g}{why}, got {value:g}")


def to_json(config) -> dict:
    """The saved fields of ``config`` as JSON-ready values (tuples become lists)."""
    values = {}
    for field, _ in _fields(type(config)):
        if field.metadata.get("saved", True):
            value = getattr(config, field.name)
            values[field.name] = list(value) if isinstance(value, tuple) else value
    return values


def resumable_fields(config_class=TrainConfig) -> tuple[str, ...]:
    """The fields that may change when a run resumes."""
    return tuple(field.name for field, _ in _fields(config_class) if field.metadata.get("resumable"))


def changed_settings(previous: dict, config, ignore: Iterable[str] | None = None) -> list[str]:
    """The settings of ``config`` that differ from ``previous`` (a config.json or metrics.json), but ``ignore``.

    ``ignore`` defaults to the resumable fields. A key missing from ``previous``
    (written by an older version) had its default value then.
    """
    ignore = set(resumable_fields(type(config)) if ignore is None else ignore)
    wanted = to_json(config)
    defaults = to_json(type(config)())
    return sorted(key for key in wanted if key not in ignore and previous.get(key, defaults.get(key)) != wanted[key])
