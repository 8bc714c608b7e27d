"""Leakage metrics: how much the activations a client sends reveal about its input."""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from nopeek_tf.dcor import distance_correlation


def mean_batch_dcor(client: Callable, images: tf.data.Dataset, batch_size: int) -> tuple[float, int]:
    """Mean dCor(image, client(image)) over consecutive batches of a fixed size.

    dCor is a batch statistic whose value depends on the batch size, so results
    are comparable only at equal ``batch_size``. Batches are taken in the
    dataset's order; the last incomplete batch is dropped, unless the dataset is
    smaller than one batch, in which case it is one batch of all its images.

    Args:
      client: maps an image batch to activations (e.g. ``SplitModel.send``: what the device sends).
      images: a dataset of single images or of ``(image, label)`` pairs, unbatched.
      batch_size: samples per dCor batch (at least 2).

    Returns:
      (mean dCor, the batch size actually used).
    """
    if batch_size < 2:
        raise ValueError(f"dCor batch size must be at least 2, got {batch_size}")
    if isinstance(images.element_spec, tuple):
        images = images.map(lambda image, *_: image)
    count = int(images.reduce(0, lambda n, _: n + 1))
    if count < 2:
        raise ValueError(f"dCor needs at least 2 images, the dataset has {count}")
    batch_size = min(batch_size, count)
    values = [
        float(distance_correlation(batch, client(batch, training=False)))
        for batch in images.batch(batch_size, drop_remainder=True)
    ]
    return float(np.mean(values)), batch_size
