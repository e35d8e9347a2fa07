"""Edge cases of tfp_flows.bijectors.ActNorm against closed forms in numpy."""

import numpy as np
import pytest
import tensorflow as tf

from tfp_flows import bijectors as tffb


def _params(rng, shape, dtype=np.float64):
  return (rng.normal(size=shape).astype(dtype), 0.5 * rng.normal(size=shape).astype(dtype))


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_image_forward_inverse_and_log_det_match_closed_form(dtype, tol):
  rng = np.random.default_rng(0)
  loc, log_scale = _params(rng, [4], dtype)
  x = rng.normal(size=[2, 3, 5, 4]).astype(dtype)
  bijector = tffb.ActNorm(loc, log_scale)

  y = bijector.forward(x).numpy()
  assert y.dtype == dtype
  np.testing.assert_allclose(y, x * np.exp(log_scale) + loc, rtol=tol, atol=tol)
  np.testing.assert_allclose(bijector.inverse(tf.constant(y)).numpy(),
                             (y - loc) * np.exp(-log_scale), rtol=tol, atol=tol)
  # One [3, 5, 4] image: 15 pixels, each contributing sum(log_scale).
  expected = np.full([2], 15 * log_scale.sum())
  np.testing.assert_allclose(bijector.forward_log_det_jacobian(x, event_ndims=3).numpy(),
                             expected, rtol=tol, atol=tol)
  np.testing.assert_allclose(
      bijector.inverse_log_det_jacobian(tf.constant(y), event_ndims=3).numpy(), -expected,
      rtol=tol, atol=tol)
  per_pixel = bijector.forward_log_det_jacobian(x, event_ndims=1).numpy()
  np.testing.assert_allclose(np.broadcast_to(per_pixel, [2, 3, 5]),
                             np.full([2, 3, 5], log_scale.sum()), rtol=tol, atol=tol)


def test_batched_parameters_per_row():
  rng = np.random.default_rng(1)
  loc, log_scale = _params(rng, [2, 3])
  x = rng.normal(size=[2, 3])
  bijector = tffb.ActNorm(loc, log_scale)
  assert bijector.experimental_batch_shape() == [2]
  np.testing.assert_allclose(bijector.forward(x).numpy(), x * np.exp(log_scale) + loc,
                             rtol=1e-12)
  fldj = bijector.forward_log_det_jacobian(x, event_ndims=1).numpy()
  assert fldj.shape == (2,)
  np.testing.assert_allclose(fldj, log_scale.sum(axis=-1), rtol=1e-12)


def test_batched_parameters_per_image():
  rng = np.random.default_rng(2)
  loc, log_scale = _params(rng, [2, 1, 1, 3])
  x = rng.normal(size=[2, 4, 5, 3])
  bijector = tffb.ActNorm(loc, log_scale)
  assert bijector.experimental_batch_shape() == [2, 1, 1]
  np.testing.assert_allclose(bijector.forward(x).numpy(), x * np.exp(log_scale) + loc,
                             rtol=1e-12)
  np.testing.assert_allclose(bijector.forward_log_det_jacobian(x, event_ndims=3).numpy(),
                             20 * log_scale.reshape(2, 3).sum(-1), rtol=1e-12)


def test_python_lists_default_to_float32_and_float64_is_kept():
  assert tffb.ActNorm([0.0, 1.0], [0.0, 0.5]).dtype == tf.float32
  bijector = tffb.ActNorm(np.zeros(2), np.array([0.0, 0.5]))
  assert bijector.dtype == tf.float64
  np.testing.assert_allclose(bijector.forward(np.ones([1, 2])).numpy(),
                             [[1.0, np.exp(0.5)]], rtol=1e-15)


@pytest.mark.parametrize("bad", ["loc", "log_scale"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_validate_args_rejects_non_finite_parameters(bad, value):
  params = {"loc": np.zeros(3), "log_scale": np.zeros(3)}
  params[bad][1] = value
  with pytest.raises(tf.errors.InvalidArgumentError, match=f"ActNorm: {bad} must be finite"):
    tffb.ActNorm(validate_args=True, **params)


def test_validate_args_bijector_built_eagerly_works_in_tf_function():
  # The common TFP pattern: build eagerly, evaluate inside tf.function / XLA.
  loc, log_scale = np.array([0.5, -1.0]), np.array([0.1, 0.2])
  bijector = tffb.ActNorm(loc, log_scale, validate_args=True)
  x = np.array([[1.0, 2.0]])
  expected = x * np.exp(log_scale) + loc
  np.testing.assert_allclose(tf.function(bijector.forward)(x).numpy(), expected,
                             rtol=1e-12)
  np.testing.assert_allclose(
      tf.function(bijector.forward, jit_compile=True)(x).numpy(), expected, rtol=1e-12)


def test_wrong_channel_count_raises():
  bijector = tffb.ActNorm(np.zeros(4), np.zeros(4))
  with pytest.raises(ValueError, match=r"ActNorm expects inputs with 4 channels.*\[2, 3\]"):
    bijector.forward(np.ones([2, 3]))
  with pytest.raises(ValueError, match=r"ActNorm expects inputs with 4 channels.*\[2, 5\]"):
    bijector.inverse(np.ones([2, 5]))


def test_scalar_parameters_raise():
  with pytest.raises(ValueError, match="must have a channel axis"):
    tffb.ActNorm(0.0, 1.0)


def test_mixed_dtypes_raise():
  with pytest.raises(TypeError, match="share one dtype; got float32 and float64"):
    tffb.ActNorm(np.zeros(2, np.float32), np.zeros(2, np.float64))


@pytest.mark.parametrize("shape", [[None, None], None], ids=["unknown_size", "unknown_rank"])
@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
def test_a_channel_count_unknown_when_tracing_is_checked_when_run(shape, jit_compile):
  # [2, 1] against 3 channels broadcast into a finite [2, 3] answer (XLA drops asserts).
  bijector = tffb.ActNorm([0.5, -1.0, 2.0], [0.1, 0.2, -0.3])
  inverse = tf.function(bijector.inverse, jit_compile=jit_compile,
                        input_signature=[tf.TensorSpec(shape, tf.float32)])
  x = np.array([[1.0, 2.0, 3.0]], np.float32)
  np.testing.assert_allclose(inverse(x), (x - [0.5, -1.0, 2.0]) * np.exp([-0.1, -0.2, 0.3]),
                             rtol=1e-6)
  with pytest.raises(tf.errors.InvalidArgumentError):
    inverse(np.ones([2, 1], np.float32))
