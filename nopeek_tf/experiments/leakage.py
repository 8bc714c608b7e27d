"""Deprecated: :func:`nopeek_tf.core.dcor.mean_batch_dcor` (over arrays) replaces this module.

Kept so that code written against the old name keeps working; it will be removed.
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import tensorflow as tf

from nopeek_tf.core.dcor import mean_batch_dcor as _mean_batch_dcor


def mean_batch_dcor(client: Callable, images: tf.data.Dataset, batch_size: int) -> tuple[float, int]:
    """Deprecated: ``nopeek_tf.core.dcor.mean_batch_dcor(images, activations, batch_size)``."""
    warnings.warn("nopeek_tf.experiments.leakage.mean_batch_dcor is deprecated; use nopeek_tf.core.dcor.mean_batch_dcor",
                  DeprecationWarning, stacklevel=2)
    if isinstance(images.element_spec, tuple):
        images = images.map(lambda image, *_: image)
    array = np.stack(list(images.as_numpy_iterator()))
    return _mean_batch_dcor(array, np.asarray(client(array, training=False)), batch_size)
