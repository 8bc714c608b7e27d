"""Every setting once, without TensorFlow: the flags, their checks and ``config.json``.

* :mod:`nopeek_tf.config.settings`: the machinery (:func:`setting` fields that are also absl flags,
  :func:`define_flags`, :func:`from_flags`, :func:`check`, :func:`to_json`, :class:`ConfigError`).
* :mod:`nopeek_tf.config.train`: :class:`TrainConfig`, composed of its parts (:class:`DataSettings`,
  :class:`NetworkSettings`, :class:`Defence`, :class:`OptimisationSettings`,
  :class:`DistributionSettings`, :class:`ReportingSettings`), and the measured recommendations.
* :mod:`nopeek_tf.config.attack`: :class:`AttackBudget`, :class:`EvaluationConfig` and the quick budget.
* :mod:`nopeek_tf.config.recommend`: :class:`RecommendSettings`, the limits of ``train.recommend``.

A script run by :func:`nopeek_tf.runtime.run_absl_cli` lists these flags in its ``--helpshort``.
"""

from nopeek_tf.config.attack import QUICK_BUDGET, QUICK_EVALUATION, AttackBudget, EvaluationConfig
from nopeek_tf.config.recommend import RecommendSettings
from nopeek_tf.config.settings import (  # noqa: F401  (the front door)
    ConfigError, Settings, changed_settings, check, define_flags, field_names,
    flag_fields, from_flags, given_flags, leaf_fields, parse_image_size, resumable_fields,
    setting, to_json)
from nopeek_tf.config.train import (  # noqa: F401  (the front door)
    AUTO_WARMUP_SHARE, BUILT_IN_ARCHITECTURES, DATASET_DEFAULTS, DEFAULT_ARCH_FOR_DATASET, DEFENCE_FIELDS,
    DEFENCES, NOISE_KINDS, OTHER_DATASET_DEFAULTS, RECOMMENDED_DEFENCE, STRATEGIES,
    DataSettings, Defence, DistributionSettings, NetworkSettings,
    OptimisationSettings, ReportingSettings, TrainConfig, default_arch, flag_text)
