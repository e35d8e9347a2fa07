"""Edge cases of tfp_flows.bijectors.InvertibleConv1x1 against numpy linear algebra."""

import numpy as np
import pytest
import tensorflow as tf

from tfp_flows import bijectors as tffb
from tfp_flows.bijectors import invertible_conv1x1

PERMUTATION = [2, 0, 3, 1]
SIGN = np.array([1.0, -1.0, -1.0, 1.0])


def _lu_parts(rng, batch=()):
  return dict(permutation=PERMUTATION,
              lower=rng.normal(size=list(batch) + [4, 4]),
              upper=rng.normal(size=list(batch) + [4, 4]),
              log_abs_diag=0.5 * rng.normal(size=list(batch) + [4]), sign=SIGN)


def _numpy_lu_matrix(parts):
  """W = P L U with P[i, :] = e_{p[i]}, unit-lower L, U with diagonal sign * exp(s)."""
  p = np.eye(4)[parts["permutation"]]
  lower = np.tril(parts["lower"], -1) + np.eye(4)
  upper = np.triu(parts["upper"], 1) + np.apply_along_axis(
      np.diag, -1, parts["sign"] * np.exp(parts["log_abs_diag"]))
  return p @ lower @ upper


def test_lu_matrix_equals_p_l_u_and_log_det_equals_slogdet():
  rng = np.random.default_rng(0)
  parts = _lu_parts(rng)
  bijector = tffb.InvertibleConv1x1(**parts)
  w = _numpy_lu_matrix(parts)
  assert bijector.is_lu
  np.testing.assert_allclose(bijector.matrix().numpy(), w, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(bijector.inverse_matrix().numpy(), np.linalg.inv(w),
                             rtol=1e-10, atol=1e-10)
  sign, log_abs_det = np.linalg.slogdet(w)
  np.testing.assert_allclose(log_abs_det, parts["log_abs_diag"].sum(), rtol=1e-12)
  assert sign == np.linalg.det(np.eye(4)[PERMUTATION]) * np.prod(SIGN)

  x = rng.normal(size=[2, 3, 3, 4])
  np.testing.assert_allclose(bijector.forward(x).numpy(), x @ w.T, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(bijector.inverse(x).numpy(), x @ np.linalg.inv(w).T,
                             rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(bijector.forward_log_det_jacobian(x, event_ndims=3).numpy(),
                             np.full([2], 9 * log_abs_det), rtol=1e-12)
  np.testing.assert_allclose(bijector.inverse_log_det_jacobian(x, event_ndims=1).numpy(),
                             np.full([2, 3, 3], -log_abs_det), rtol=1e-12)


def test_lu_takes_a_permutation_of_any_integer_dtype():
  # NumPy's default integers are int64, as tfb.Permute accepts; the bijector slices too.
  rng = np.random.default_rng(0)
  parts = _lu_parts(rng, batch=[2])
  x = rng.normal(size=[2, 4])  # one point per bijector of the batch
  expected = tffb.InvertibleConv1x1(**parts).forward(x).numpy()
  for permutation in (np.array(PERMUTATION), tf.constant(PERMUTATION, tf.int64)):
    bijector = tffb.InvertibleConv1x1(**{**parts, "permutation": permutation})
    np.testing.assert_array_equal(bijector.forward(x).numpy(), expected)
    np.testing.assert_array_equal(bijector[1].forward(x[1]).numpy(), expected[1])
  with pytest.raises(TypeError, match="permutation must hold integers"):
    tffb.InvertibleConv1x1(**{**parts, "permutation": np.array(PERMUTATION, float)})


def test_lu_reads_only_the_strict_triangles():
  rng = np.random.default_rng(1)
  parts = _lu_parts(rng)
  noisy = dict(parts, lower=parts["lower"] + np.triu(rng.normal(size=[4, 4])),
               upper=parts["upper"] + np.tril(rng.normal(size=[4, 4])))
  np.testing.assert_allclose(tffb.InvertibleConv1x1(**noisy).matrix().numpy(),
                             _numpy_lu_matrix(parts), rtol=1e-12, atol=1e-12)


def test_lu_batched_factors_broadcast_against_shared_diagonal():
  # Parameters broadcast like any TFP batch: per-member L, U with one shared diagonal.
  rng = np.random.default_rng(2)
  parts = _lu_parts(rng, batch=[2])
  parts["log_abs_diag"] = parts["log_abs_diag"][0]
  bijector = tffb.InvertibleConv1x1(**parts)
  x = rng.normal(size=[2, 4])
  expected = [_numpy_lu_matrix(dict(parts, lower=parts["lower"][i],
                                    upper=parts["upper"][i])) @ x[i] for i in range(2)]
  np.testing.assert_allclose(bijector.forward(x).numpy(), expected, rtol=1e-12, atol=1e-12)


def test_lu_fully_batched_matches_numpy():
  rng = np.random.default_rng(3)
  parts = _lu_parts(rng, batch=[2])
  bijector = tffb.InvertibleConv1x1(**parts)
  x = rng.normal(size=[2, 4])
  w = _numpy_lu_matrix(parts)
  assert w.shape == (2, 4, 4)
  np.testing.assert_allclose(bijector.forward(x).numpy(), np.einsum("bij,bj->bi", w, x),
                             rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(bijector.forward_log_det_jacobian(x, event_ndims=1).numpy(),
                             np.linalg.slogdet(w)[1], rtol=1e-12)


def test_plain_forward_inverse_and_log_det_match_numpy():
  rng = np.random.default_rng(4)
  w = rng.normal(size=[4, 4])
  assert np.linalg.det(w) != 0
  bijector = tffb.InvertibleConv1x1(weight=w)
  x = rng.normal(size=[2, 2, 3, 4])
  np.testing.assert_allclose(bijector.forward(x).numpy(), x @ w.T, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(bijector.inverse(x).numpy(), x @ np.linalg.inv(w).T,
                             rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(bijector.forward_log_det_jacobian(x, event_ndims=3).numpy(),
                             np.full([2], 6 * np.linalg.slogdet(w)[1]), rtol=1e-12)


def test_plain_batched_weight_per_image():
  rng = np.random.default_rng(5)
  w = rng.normal(size=[2, 1, 1, 3, 3])
  x = rng.normal(size=[2, 4, 2, 3])
  bijector = tffb.InvertibleConv1x1(weight=w)
  assert bijector.experimental_batch_shape() == [2, 1, 1]
  np.testing.assert_allclose(bijector.forward(x).numpy(),
                             np.einsum("bij,bhwj->bhwi", w[:, 0, 0], x), rtol=1e-12,
                             atol=1e-12)
  np.testing.assert_allclose(bijector.forward_log_det_jacobian(x, event_ndims=3).numpy(),
                             8 * np.linalg.slogdet(w[:, 0, 0])[1], rtol=1e-12)


@pytest.mark.parametrize("jit_compile", [False, True], ids=["eager", "xla"])
def test_plain_log_abs_det_and_gradient_match_numpy(jit_compile):
  rng = np.random.default_rng(6)
  # A batch of two: one determinant positive, one negative.
  w = rng.normal(size=[2, 5, 5])
  if np.linalg.det(w[0]) * np.linalg.det(w[1]) > 0:
    w[1] = w[1][[1, 0, 2, 3, 4]]  # A row swap flips the sign of the determinant.
  assert np.linalg.det(w[0]) * np.linalg.det(w[1]) < 0

  def value_and_gradient(w):
    with tf.GradientTape() as tape:
      tape.watch(w)
      value = invertible_conv1x1.log_abs_det(w)
      weighted = tf.reduce_sum(value * tf.constant([1.0, 2.0], w.dtype))
    return value, tape.gradient(weighted, w)

  fn = tf.function(value_and_gradient, jit_compile=True) if jit_compile else (
      value_and_gradient)
  value, gradient = fn(tf.constant(w))
  np.testing.assert_allclose(value.numpy(), np.linalg.slogdet(w)[1], rtol=1e-12)
  # d log|det W| / dW = W^{-T}, scaled by the upstream weights 1 and 2.
  expected = np.swapaxes(np.linalg.inv(w), -1, -2) * np.array([1.0, 2.0])[:, None, None]
  np.testing.assert_allclose(gradient.numpy(), expected, rtol=1e-10, atol=1e-10)


def test_plain_bijector_log_det_gradient_under_xla():
  rng = np.random.default_rng(7)
  w = tf.constant(rng.normal(size=[3, 3]).astype(np.float32))

  @tf.function(jit_compile=True)
  def gradient(w):
    with tf.GradientTape() as tape:
      tape.watch(w)
      fldj = tffb.InvertibleConv1x1(weight=w).forward_log_det_jacobian(
          tf.zeros([1, 2, 2, 3]), event_ndims=3)
    return fldj, tape.gradient(fldj, w)

  fldj, grad = gradient(w)
  np.testing.assert_allclose(fldj.numpy(), [4 * np.linalg.slogdet(w.numpy())[1]],
                             rtol=1e-5)
  np.testing.assert_allclose(grad.numpy(), 4 * np.linalg.inv(w.numpy()).T, rtol=1e-4,
                             atol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    ({}, "needs either `weight` alone"),
    (dict(weight=np.eye(2), permutation=[1, 0], lower=np.eye(2), upper=np.eye(2),
          log_abs_diag=np.zeros(2), sign=np.ones(2)), "needs either `weight` alone"),
    (dict(permutation=[1, 0], lower=np.eye(2), upper=np.eye(2), log_abs_diag=np.zeros(2)),
     "LU variant of InvertibleConv1x1 needs all of"),
    (dict(lower=np.eye(2)), "LU variant of InvertibleConv1x1 needs all of"),
    (dict(weight=np.ones([2, 3])), r"square C x C matrices; got shape \(2, 3\)"),
    (dict(weight=np.ones([3])), r"square C x C matrices; got shape \(3,\)"),
])
def test_constructor_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    tffb.InvertibleConv1x1(**kwargs)


def test_validate_args_rejects_non_finite_parameters():
  with pytest.raises(tf.errors.InvalidArgumentError, match="weight must be finite"):
    tffb.InvertibleConv1x1(weight=np.array([[1.0, np.nan], [0.0, 1.0]]),
                           validate_args=True)
  parts = _lu_parts(np.random.default_rng(8))
  parts["log_abs_diag"][2] = np.inf
  with pytest.raises(tf.errors.InvalidArgumentError, match="log_abs_diag must be finite"):
    tffb.InvertibleConv1x1(validate_args=True, **parts)


def test_validate_args_bijector_built_eagerly_works_in_tf_function():
  w = np.array([[2.0, 1.0], [0.0, 1.0]])
  bijector = tffb.InvertibleConv1x1(weight=w, validate_args=True)
  x = np.array([[1.0, 3.0]])
  np.testing.assert_allclose(tf.function(bijector.forward)(x).numpy(), x @ w.T,
                             rtol=1e-12)


def test_wrong_channel_count_raises():
  bijector = tffb.InvertibleConv1x1(weight=np.eye(3))
  with pytest.raises(ValueError, match=r"InvertibleConv1x1 expects inputs with 3 channels"):
    bijector.forward(np.ones([2, 4]))
  lu = tffb.InvertibleConv1x1(**_lu_parts(np.random.default_rng(9)))
  with pytest.raises(ValueError, match=r"expects inputs with 4 channels.*\[1, 2, 2\]"):
    lu.inverse(np.ones([1, 2, 2]))
