"""The machinery behind every setting: dataclass fields that are also flags, checks and JSON.

Each setting is written once, as a field made with :func:`setting`. From the
dataclass come the absl flags (:func:`define_flags`), the config read back from
the command line (:func:`from_flags`), the one-line checks (:func:`check`), and
the JSON written to ``config.json`` and ``metrics.json`` (:func:`to_json`). A
dataclass may be composed of parts (fields whose type is itself a settings
dataclass, as :class:`nopeek_tf.config.TrainConfig` is): its flags, checks and JSON are
its parts' fields, flat, and it takes and answers them by their flat names.

No TensorFlow here, so ``--help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any

from nopeek_tf import runtime

# The module that owns every settings flag (a script's --helpshort lists them: runtime.run_absl_cli).
FLAGS_MODULE = runtime.SETTINGS_FLAGS_MODULE


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
        names = set(field_names(cls))
        kept = {name: tuple(value) if isinstance(value, list) else value
                for name, value in values.items() if name in names}
        return cls(**kept)


# --- Deriving flags, checks and JSON from the fields ------------------------------------------

@functools.cache
def leaf_fields(config_class) -> tuple[tuple[dataclasses.Field, Any], ...]:
    """The leaf fields of ``config_class`` and their type hints: a part's fields in place of the part.

    Cached per class (a class's fields do not change), since every construction and check reads them.
    """
    hints = typing.get_type_hints(config_class)
    fields = []
    for field in dataclasses.fields(config_class):
        hint = hints[field.name]
        if is_part(hint):
            fields.extend(leaf_fields(hint))
        else:
            fields.append((field, hint))
    return tuple(fields)


def is_part(hint) -> bool:
    """True for a type hint that is itself a settings dataclass (a part of a composed one)."""
    return isinstance(hint, type) and issubclass(hint, Settings) and dataclasses.is_dataclass(hint)


def field_names(config_class) -> list[str]:
    """The flat names of ``config_class``'s settings (its parts' fields, for a composed class)."""
    return [field.name for field, _ in leaf_fields(config_class)]


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
    return [field.name for field, _ in leaf_fields(config_class)
            if field.metadata.get("flag", True) and (include_swept or not field.metadata.get("swept"))]


def define_flags(config_class, include_swept: bool = True, flag_values=None) -> None:
    """Defines an absl flag for each flag field of ``config_class``, with its default and help.

    Checks are not absl validators: :func:`check` raises one-line ConfigErrors
    after parsing, so that a bad value reads the same from a script and a test.
    A script run by :func:`nopeek_tf.runtime.run_absl_cli` lists them in its ``--helpshort``.
    """
    from absl import flags

    flag_values = flags.FLAGS if flag_values is None else flag_values
    definers = {"bool": flags.DEFINE_bool, "int": flags.DEFINE_integer, "float": flags.DEFINE_float,
                "str": flags.DEFINE_string, "size": flags.DEFINE_string, "list": flags.DEFINE_list,
                "floats": flags.DEFINE_list}
    fields = dict((field.name, (field, hint)) for field, hint in leaf_fields(config_class))
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
        definers[kind](name, default, help_text, flag_values=flag_values, module_name=FLAGS_MODULE)


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
    fields = {field.name: hint for field, hint in leaf_fields(config_class)}
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
    for field, _ in leaf_fields(type(config)):
        value = getattr(config, field.name)
        for item in value if isinstance(value, tuple) else [value]:
            _check_value(field.name, item, field.metadata)


def _check_value(name: str, value: Any, meta) -> None:
    if value is None:  # an optional setting left unset
        return
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
    for field, _ in leaf_fields(type(config)):
        if field.metadata.get("saved", True):
            value = getattr(config, field.name)
            values[field.name] = list(value) if isinstance(value, tuple) else value
    return values


def resumable_fields(config_class) -> tuple[str, ...]:
    """The fields that may change when a run resumes."""
    return tuple(field.name for field, _ in leaf_fields(config_class) if field.metadata.get("resumable"))


def changed_settings(previous: dict, config, ignore: Iterable[str] | None = None) -> list[str]:
    """The settings of ``config`` that differ from ``previous`` (a config.json or metrics.json), but ``ignore``.

    ``ignore`` defaults to the resumable fields. A key missing from ``previous``
    (written by an older version) had its default value then.
    """
    ignore = set(resumable_fields(type(config)) if ignore is None else ignore)
    wanted = to_json(config)
    defaults = to_json(type(config)())
    return sorted(key for key in wanted if key not in ignore and previous.get(key, defaults.get(key)) != wanted[key])
