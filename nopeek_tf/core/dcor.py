"""Exact, differentiable sample distance correlation (the V-statistic).

For a batch of n samples, each flattened to a vector:

1. a_ij = ||x_i - x_j||_2 (Euclidean, not squared); b_ij likewise for z.
2. Double-centre: A_ij = a_ij - mean_i(a) - mean_j(a) + mean(a); same for B.
3. dCov^2 = mean(A * B), dVar^2(X) = mean(A^2), dVar^2(Z) = mean(B^2).
4. dCor = sqrt(dCov^2 / sqrt(dVar^2(X) dVar^2(Z))), and 0 when a variance is 0.

This equals ``dcor.distance_correlation`` (the reference implementation) and,
unlike the squared-distance variant found in several public implementations,
measures non-linear dependence. Gradients are finite everywhere: zero distances
(the diagonal, duplicate rows) and zero variances get a zero gradient instead
of the infinite gradient of sqrt at 0.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def _flatten_batch(x: tf.Tensor, name: str) -> tf.Tensor:
    """Returns ``x`` as a float [n, features] matrix; checks the static batch size."""
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        x = tf.cast(x, tf.float32)
    if x.shape.rank is not None and x.shape.rank < 1:
        raise ValueError(f"distance correlation: {name} must have a batch dimension, got a scalar")
    if x.shape.rank == 1:
        x = x[:, tf.newaxis]
    n = x.shape[0]
    if n is not None and n < 2:
        raise ValueError(
            f"distance correlation needs a batch of at least 2 samples, {name} has {n}"
        )
    return tf.reshape(x, [tf.shape(x)[0], -1])


def _safe_sqrt(x: tf.Tensor, is_zero: tf.Tensor) -> tf.Tensor:
    """sqrt(x), with value and gradient 0 where ``is_zero`` is set (no NaN)."""
    safe_x = tf.where(is_zero, tf.ones_like(x), x)
    return tf.where(is_zero, tf.zeros_like(x), tf.sqrt(safe_x))


def pairwise_distances(x: tf.Tensor) -> tf.Tensor:
    """Euclidean distance matrix of the rows of a [n, d] matrix.

    Features are centred first (distances do not change) so that the Gram form
    ``|x_i|^2 - 2 x_i.x_j + |x_j|^2`` keeps its precision in float32. Squared
    distances below the rounding error of that form are exact zeros (the
    diagonal, duplicate rows): their value and gradient are 0.

    Args:
      x: float tensor [n, d].

    Returns:
      [n, n] tensor of distances, same dtype as ``x``.
    """
    x = x - tf.reduce_mean(x, axis=0, keepdims=True)
    gram = tf.matmul(x, x, transpose_b=True)
    squared_norms = tf.linalg.diag_part(gram)
    squared = squared_norms[:, tf.newaxis] - 2.0 * gram + squared_norms[tf.newaxis, :]
    rounding = 8.0 * float(np.finfo(x.dtype.as_numpy_dtype).eps)
    tolerance = rounding * (squared_norms[:, tf.newaxis] + squared_norms[tf.newaxis, :])
    n = tf.shape(x)[0]
    is_zero = tf.logical_or(squared <= tolerance, tf.eye(n, dtype=tf.bool))
    return _safe_sqrt(squared, is_zero)


def _double_centre(distances: tf.Tensor) -> tf.Tensor:
    row_mean = tf.reduce_mean(distances, axis=1, keepdims=True)
    col_mean = tf.reduce_mean(distances, axis=0, keepdims=True)
    return distances - row_mean - col_mean + tf.reduce_mean(distances)


def distance_correlation(x: tf.Tensor, z: tf.Tensor) -> tf.Tensor:
    """Sample distance correlation dCor(X, Z) of two batches.

    Args:
      x: a batch [n, ...] of any rank; each sample is flattened.
      z: a batch [n, ...] with the same n (may have another shape and dtype).

    Returns:
      A scalar in [0, 1], in the wider of the two float dtypes (float32 for
      integer or half-precision inputs, which are computed in float32).

    Raises:
      ValueError: if the batch sizes differ or a batch has fewer than 2 samples
        (checked when the shapes are static; otherwise at run time with an
        ``InvalidArgumentError`` carrying the same message).
    """
    x = _flatten_batch(x, "x")
    z = _flatten_batch(z, "z")
    dtype = tf.float64 if tf.float64 in (x.dtype, z.dtype) else tf.float32
    x = tf.cast(x, dtype)
    z = tf.cast(z, dtype)
    if x.shape[0] is not None and z.shape[0] is not None and x.shape[0] != z.shape[0]:
        raise ValueError(
            f"distance correlation: batch sizes differ, x has {x.shape[0]} samples and z has {z.shape[0]}"
        )
    if x.shape[0] is None or z.shape[0] is None:
        checks = [
            tf.debugging.assert_equal(tf.shape(x)[0], tf.shape(z)[0],
                                      message="distance correlation: batch sizes of x and z differ"),
            tf.debugging.assert_greater_equal(tf.shape(x)[0], 2,
                                              message="distance correlation needs a batch of at least 2 samples"),
        ]
        with tf.control_dependencies(checks):  # the checks run before any op that would fail less clearly
            x, z = tf.identity(x), tf.identity(z)

    a = _double_centre(pairwise_distances(x))
    b = _double_centre(pairwise_distances(z))
    dcov2 = tf.maximum(tf.reduce_mean(a * b), 0.0)
    dvar2_x = tf.reduce_mean(a * a)
    dvar2_z = tf.reduce_mean(b * b)
    no_variance = tf.logical_or(dvar2_x <= 0.0, dvar2_z <= 0.0)
    dvar_x = _safe_sqrt(dvar2_x, no_variance)
    dvar_z = _safe_sqrt(dvar2_z, no_variance)
    denominator = tf.where(no_variance, tf.ones_like(dvar_x), dvar_x * dvar_z)
    ratio = tf.where(no_variance, tf.zeros_like(dcov2), tf.minimum(dcov2 / denominator, 1.0))
    return _safe_sqrt(ratio, ratio <= 0.0)


def mean_batch_dcor(images: np.ndarray, activations: np.ndarray, batch_size: int) -> tuple[float, int]:
    """Mean dCor(image, activation) over consecutive batches of a fixed size.

    dCor is a batch statistic whose value depends on the batch size, so results
    are comparable only at equal ``batch_size``. Batches are taken in order; the
    last incomplete batch is dropped, unless there are fewer images than one
    batch, in which case it is one batch of all of them.

    Args:
      images: the raw inputs [N, ...].
      activations: what the client sends for them [N, ...] (e.g. ``SplitModel.sent_activations(images)``).
      batch_size: samples per dCor batch (at least 2).

    Returns:
      (mean dCor, the batch size actually used).
    """
    if batch_size < 2:
        raise ValueError(f"dCor batch size must be at least 2, got {batch_size}")
    if len(images) != len(activations):
        raise ValueError(f"{len(images)} images but {len(activations)} activations")
    if len(images) < 2:
        raise ValueError(f"dCor needs at least 2 images, got {len(images)}")
    batch_size = min(batch_size, len(images))
    values = [float(distance_correlation(images[start:start + batch_size], activations[start:start + batch_size]))
              for start in range(0, len(images) - batch_size + 1, batch_size)]
    return float(np.mean(values)), batch_size
