"""Edge cases of tfp_flows.bijectors.Logit against closed forms and finite differences."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_flows import bijectors as tffb

tfd = tfp.distributions


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


@pytest.mark.parametrize("alpha", [0.0, 0.05, 0.2])
def test_forward_inverse_and_log_dets_match_closed_form(alpha):
  bijector = tffb.Logit(alpha=alpha)
  z = np.linspace(-6.0, 6.0, 25)
  x = (_sigmoid(z) - alpha) / (1.0 - 2.0 * alpha)
  np.testing.assert_allclose(bijector.forward(z).numpy(), x, rtol=1e-12, atol=1e-15)
  p = alpha + (1.0 - 2.0 * alpha) * x
  np.testing.assert_allclose(bijector.inverse(tf.constant(x)).numpy(), np.log(p / (1 - p)),
                             rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(bijector.inverse(tf.constant(x)).numpy(), z, rtol=1e-10,
                             atol=1e-10)
  # d x / d z = sigmoid(z) (1 - sigmoid(z)) / (1 - 2 alpha).
  fldj = np.log(_sigmoid(z) * (1.0 - _sigmoid(z)) / (1.0 - 2.0 * alpha))
  np.testing.assert_allclose(bijector.forward_log_det_jacobian(z, event_ndims=0).numpy(),
                             fldj, rtol=1e-12)
  np.testing.assert_allclose(
      bijector.inverse_log_det_jacobian(tf.constant(x), event_ndims=0).numpy(), -fldj,
      rtol=1e-10)
  np.testing.assert_allclose(
      bijector.forward_log_det_jacobian(z.reshape(5, 5), event_ndims=1).numpy(),
      fldj.reshape(5, 5).sum(-1), rtol=1e-12)


def test_inverse_log_det_matches_central_difference():
  bijector = tffb.Logit(alpha=0.05)
  x = np.array([0.0, 0.01, 0.3, 0.5, 0.97, 1.0])
  eps = 1e-7
  slope = (bijector.inverse(x + eps).numpy() - bijector.inverse(x - eps).numpy()) / (2 * eps)
  np.testing.assert_allclose(bijector.inverse_log_det_jacobian(x, event_ndims=0).numpy(),
                             np.log(slope), rtol=1e-6)


def test_forward_log_det_is_stable_for_large_latents():
  bijector = tffb.Logit(alpha=0.05)
  z = np.array([-800.0, -50.0, 50.0, 800.0])
  # log(sigmoid(z) sigmoid(-z)) = -|z| - 2 log(1 + exp(-|z|)).
  expected = -np.abs(z) - 2 * np.log1p(np.exp(-np.abs(z))) - math.log(0.9)
  for dtype in (np.float64, np.float32):
    np.testing.assert_allclose(
        bijector.forward_log_det_jacobian(z.astype(dtype), event_ndims=0).numpy(),
        expected, rtol=1e-6)


def test_alpha_out_of_range_raises():
  for alpha in (-0.1, 0.5, 0.7):
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 0.5\); got"):
      tffb.Logit(alpha=alpha)


def test_validate_args_rejects_inputs_outside_the_unit_interval():
  bijector = tffb.Logit(validate_args=True)
  for bad in ([1.5, 0.5], [0.5, -0.5]):
    with pytest.raises(tf.errors.InvalidArgumentError, match="Logit"):
      bijector.inverse(np.array(bad))


def test_validate_args_accepts_inputs_in_the_unit_interval():
  x = np.array([0.0, 0.25, 0.5, 1.0])
  p = 0.05 + 0.9 * x
  np.testing.assert_allclose(tffb.Logit(validate_args=True).inverse(x).numpy(),
                             np.log(p / (1 - p)), rtol=1e-12)


def test_validate_args_inverse_accepts_every_forward_output():
  # forward(z) lies in (-alpha, 1 - alpha) / (1 - 2 alpha), a bit wider than [0, 1]; a
  # sample from a flow ending in Logit must still have a log_prob under validate_args.
  bijector = tffb.Logit(alpha=0.05, validate_args=True)
  z = np.array([-6.0, -3.0, 0.0, 3.0, 6.0])
  x = bijector.forward(z).numpy()
  assert x.min() < 0.0 and x.max() > 1.0
  np.testing.assert_allclose(bijector.inverse(tf.constant(x)).numpy(), z, rtol=1e-9)
  distribution = tfd.TransformedDistribution(
      tfd.Normal(np.float64(0), np.float64(1), validate_args=True), bijector,
      validate_args=True)
  expected = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)
              - np.log(_sigmoid(z) * (1 - _sigmoid(z)) / 0.9))
  np.testing.assert_allclose(distribution.log_prob(tf.constant(x)).numpy(), expected,
                             rtol=1e-9)
