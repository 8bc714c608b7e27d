"""Distance correlation: exactness against the `dcor` package, gradients, properties."""

import dcor as dcor_reference
import numpy as np
import pytest
import tensorflow as tf

from nopeek_tf.core.dcor import distance_correlation, pairwise_distances

SIZES = [2, 3, 16, 128, 512]
FEATURES = [1, 5, 300, 3000]
# Every size with every feature count, except 512 samples x 3000 features: the
# dcor package needs about 20 s for that one pair (it builds 512 x 512 x 3000 arrays).
CASES = [(n, d) for n in SIZES for d in FEATURES if (n, d) != (512, 3000)]


def _random_pair(rng, n, d):
    x = rng.normal(size=(n, d))
    z = np.tanh(x[:, : min(d, 8)] @ rng.normal(size=(min(d, 8), 6))) + 0.3 * rng.normal(size=(n, 6))
    return x, z


def _structured_pair(rng, n, d):
    """Images-like data: values in [0, 1], a large offset, repeated rows, a quadratic link."""
    x = rng.uniform(size=(n, d)).round(1) + 100.0
    x[n // 2 :] = x[: n - n // 2]  # duplicate rows
    z = (x[:, :1] - 100.5) ** 2 + 0.01 * rng.normal(size=(n, 1))
    return x, z


@pytest.mark.parametrize("n, d", CASES)
@pytest.mark.parametrize("make_pair", [_random_pair, _structured_pair])
def test_matches_reference(n, d, make_pair):
    rng = np.random.default_rng(n * 7919 + d)
    x, z = make_pair(rng, n, d)
    expected = dcor_reference.distance_correlation(x, z)
    assert float(distance_correlation(x, z)) == pytest.approx(expected, abs=1e-6)
    got32 = float(distance_correlation(x.astype(np.float32), z.astype(np.float32)))
    assert got32 == pytest.approx(expected, abs=1e-4)


def test_any_rank_is_flattened_per_sample():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 4, 5, 3))
    z = rng.normal(size=(20, 7))
    expected = dcor_reference.distance_correlation(x.reshape(20, -1), z)
    assert float(distance_correlation(x, z)) == pytest.approx(expected, abs=1e-9)
    # A rank-1 batch is n samples of one feature.
    v = rng.normal(size=30)
    assert float(distance_correlation(v, v**2)) == pytest.approx(
        dcor_reference.distance_correlation(v, v**2), abs=1e-9)


def test_is_not_the_squared_distance_variant():
    # With squared distances the statistic is linear (sqrt of linear CKA) and
    # is ~0 for z = x^2 on symmetric data; true dCor sees the dependence.
    x = np.linspace(-1, 1, 101)[:, None]
    assert float(distance_correlation(x, x**2)) > 0.4


def _gradients(x, z):
    x = tf.Variable(x)
    z = tf.Variable(z)
    with tf.GradientTape() as tape:
        value = distance_correlation(x, z)
    gx, gz = tape.gradient(value, [x, z])
    return value.numpy(), gx.numpy(), gz.numpy()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradients_finite_with_duplicate_rows(dtype):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(8, 10)).astype(dtype)
    x[4:] = x[:4]
    z = rng.normal(size=(8, 3)).astype(dtype)
    z[1] = z[0]
    value, gx, gz = _gradients(x, z)
    assert np.isfinite(value) and np.all(np.isfinite(gx)) and np.all(np.isfinite(gz))
    assert np.abs(gx).sum() > 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_constant_batch_gives_zero_and_zero_gradient(dtype):
    x = np.full((6, 4), 0.3, dtype)
    z = np.random.default_rng(3).normal(size=(6, 2)).astype(dtype)
    value, gx, gz = _gradients(x, z)
    assert value == 0.0
    assert np.all(gx == 0.0) and np.all(gz == 0.0)


def test_batch_of_two():
    value, gx, gz = _gradients(np.array([[0.0, 1.0], [2.0, 3.0]]), np.array([[1.0], [5.0]]))
    assert value == pytest.approx(1.0)
    assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gz))


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(10, 3))
    z = np.sin(x @ rng.normal(size=(3, 2)))
    _, gx, _ = _gradients(x, z)
    eps = 1e-6
    numeric = np.zeros_like(x)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            step = np.zeros_like(x)
            step[i, j] = eps
            numeric[i, j] = (dcor_reference.distance_correlation(x + step, z)
                             - dcor_reference.distance_correlation(x - step, z)) / (2 * eps)
    np.testing.assert_allclose(gx, numeric, atol=1e-6)


def test_invariances():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(40, 6))
    z = np.abs(x[:, :3]) + 0.2 * rng.normal(size=(40, 3))
    base = float(distance_correlation(x, z))
    rotation, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    variants = {
        "translate x": (x + 17.0, z),
        "translate z": (x, z - 3.0),
        "scale x": (x * 250.0, z),
        "scale z": (x, z * 0.01),
        "rotate x": (x @ rotation, z),
        "rotate z": (x, z @ np.linalg.qr(rng.normal(size=(3, 3)))[0]),
    }
    for name, (xv, zv) in variants.items():
        assert float(distance_correlation(xv, zv)) == pytest.approx(base, abs=1e-9), name


def test_one_for_affine_relation():
    x = np.random.default_rng(6).normal(size=(64, 5))
    assert float(distance_correlation(x, -2.5 * x + 4.0)) == pytest.approx(1.0, abs=1e-9)
    assert float(distance_correlation(x.astype(np.float32), 3 * x.astype(np.float32) + 1)) == pytest.approx(1.0, abs=1e-5)


def test_near_zero_for_independent_samples_as_n_grows():
    rng = np.random.default_rng(7)
    values = [float(distance_correlation(rng.normal(size=(n, 3)), rng.normal(size=(n, 3)))) for n in (16, 128, 1024)]
    assert values[0] > values[1] > values[2]
    assert values[2] < 0.15  # the V-statistic is biased upwards, ~n^(-1/2)


def test_pairwise_distances_exact_zero_diagonal():
    x = tf.constant(np.random.default_rng(8).normal(size=(5, 3)) + 1e4, tf.float32)
    d = pairwise_distances(x).numpy()
    assert np.all(np.diag(d) == 0.0)
    np.testing.assert_allclose(d, d.T)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="batch sizes differ"):
        distance_correlation(np.zeros((4, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="at least 2 samples"):
        distance_correlation(np.zeros((1, 2)), np.zeros((1, 2)))


def test_dynamic_batch_errors_at_run_time():
    fn = tf.function(distance_correlation, input_signature=[
        tf.TensorSpec([None, 2], tf.float32), tf.TensorSpec([None, 2], tf.float32)])
    with pytest.raises(tf.errors.InvalidArgumentError, match="batch sizes"):
        fn(tf.zeros([4, 2]), tf.zeros([3, 2]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least 2"):
        fn(tf.zeros([1, 2]), tf.zeros([1, 2]))
