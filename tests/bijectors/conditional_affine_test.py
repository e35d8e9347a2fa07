"""Edge cases of tfp_flows.bijectors.ConditionalAffine against closed forms in numpy."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_flows import bijectors as tffb

tfd = tfp.distributions


def test_without_context_matches_closed_form():
  rng = np.random.default_rng(0)
  shift, log_scale = rng.normal(size=[4]), 0.5 * rng.normal(size=[4])
  bijector = tffb.ConditionalAffine(lambda: (shift, log_scale), dtype=tf.float64)
  assert not bijector.is_conditional
  x = rng.normal(size=[3, 4])
  y = bijector.forward(x).numpy()
  np.testing.assert_allclose(y, x * np.exp(log_scale) + shift, rtol=1e-12)
  np.testing.assert_allclose(bijector.inverse(tf.constant(y)).numpy(), x, rtol=1e-12)
  np.testing.assert_allclose(bijector.forward_log_det_jacobian(x, event_ndims=1).numpy(),
                             np.full([3], log_scale.sum()), rtol=1e-12)
  np.testing.assert_allclose(
      bijector.inverse_log_det_jacobian(tf.constant(y), event_ndims=2).numpy(),
      -3 * log_scale.sum(), rtol=1e-12)


def test_context_per_image_broadcasts_over_pixels():
  rng = np.random.default_rng(1)
  c = rng.normal(size=[2, 3])
  weight = rng.normal(size=[3, 3])

  def fn(c):
    return (tf.tensordot(c, weight, 1)[:, None, None, :],
            0.5 * tf.tanh(c)[:, None, None, :])

  bijector = tffb.ConditionalAffine(fn, event_ndims=3, conditional=True, dtype="float64")
  assert bijector.is_conditional and bijector.dtype == tf.float64
  x = rng.normal(size=[2, 4, 5, 3])
  shift, log_scale = (c @ weight)[:, None, None, :], 0.5 * np.tanh(c)[:, None, None, :]
  np.testing.assert_allclose(bijector.forward(x, conditional_input=c).numpy(),
                             x * np.exp(log_scale) + shift, rtol=1e-12)
  np.testing.assert_allclose(
      bijector.forward_log_det_jacobian(x, event_ndims=3, conditional_input=c).numpy(),
      20 * 0.5 * np.tanh(c).sum(-1), rtol=1e-12)
  np.testing.assert_allclose(
      bijector.inverse_log_det_jacobian(x, event_ndims=3, conditional_input=c).numpy(),
      -20 * 0.5 * np.tanh(c).sum(-1), rtol=1e-12)


def test_learned_prior_log_prob_is_the_shifted_scaled_normal():
  rng = np.random.default_rng(2)
  c = rng.normal(size=[5, 2])
  bijector = tffb.ConditionalAffine(lambda c: (2.0 * c, 0.3 * c), conditional=True,
                                    dtype=tf.float64)
  prior = tfd.TransformedDistribution(
      tfd.Sample(tfd.Normal(np.float64(0), np.float64(1)), [2]), bijector)
  y = rng.normal(size=[5, 2])
  mean, std = 2.0 * c, np.exp(0.3 * c)
  expected = np.sum(-0.5 * ((y - mean) / std)**2 - np.log(std)
                    - 0.5 * math.log(2 * math.pi), -1)
  log_prob = prior.log_prob(y, bijector_kwargs={"conditional_input": c}).numpy()
  np.testing.assert_allclose(log_prob, expected, rtol=1e-12)


def test_not_callable_raises():
  with pytest.raises(ValueError, match="shift_and_log_scale_fn must be callable; got 3"):
    tffb.ConditionalAffine(3)


def test_conditional_flag_is_enforced():
  plain = tffb.ConditionalAffine(lambda: (0.0, 0.0))
  with pytest.raises(ValueError, match="conditional_input must be given exactly when"):
    plain.forward(np.ones([1, 2], np.float32), conditional_input=np.ones([1, 2]))
  conditional = tffb.ConditionalAffine(lambda c: (c, c), conditional=True)
  with pytest.raises(ValueError, match="conditional_input must be given exactly when"):
    conditional.inverse(np.ones([1, 2], np.float32))


@pytest.mark.parametrize("bad", ["shift", "log_scale"])
def test_validate_args_rejects_non_finite_parameters(bad):
  values = {"shift": np.zeros(2), "log_scale": np.zeros(2)}
  values[bad] = np.array([0.0, np.nan])
  bijector = tffb.ConditionalAffine(lambda: (values["shift"], values["log_scale"]),
                                    validate_args=True, dtype=tf.float64)
  with pytest.raises(tf.errors.InvalidArgumentError, match=f"{bad} not finite"):
    bijector.forward(np.ones([1, 2]))
