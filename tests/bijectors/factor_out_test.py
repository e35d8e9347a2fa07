"""Edge cases of tfp_flows.bijectors.FactorOut against a numpy multi-scale reference."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_flows import bijectors as tffb

tfb = tfp.bijectors


def _space_to_depth(x):
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(
      n, h // 2, w // 2, 4 * c)


def _depth_to_space(y):
  n, h, w, c = y.shape
  return y.reshape(n, h, w, 2, 2, c // 4).transpose(0, 1, 3, 2, 4, 5).reshape(
      n, 2 * h, 2 * w, c // 4)


def _factor_out(rng, num_kept=2, channels=4):
  loc, log_scale = rng.normal(size=[4 * num_kept]), 0.5 * rng.normal(size=[4 * num_kept])
  inner = tfb.Chain([tfb.Invert(tffb.Squeeze()), tffb.ActNorm(loc, log_scale)])
  return tffb.FactorOut(inner, num_kept, event_shape=[4, 4, channels]), loc, log_scale


def test_inverse_and_forward_match_numpy():
  rng = np.random.default_rng(0)
  bijector, loc, log_scale = _factor_out(rng)
  x = rng.normal(size=[3, 4, 4, 4])
  # Data -> base: squeeze the kept channels to [2, 2, 8], undo ActNorm, reshape back.
  latent = (_space_to_depth(x[..., :2]) - loc) * np.exp(-log_scale)
  expected_z = np.concatenate([latent.reshape(3, 4, 4, 2), x[..., 2:]], -1)
  z = bijector.inverse(x).numpy()
  np.testing.assert_allclose(z, expected_z, rtol=1e-12, atol=1e-12)
  np.testing.assert_array_equal(z[..., 2:], x[..., 2:])
  np.testing.assert_allclose(bijector.inverse_log_det_jacobian(x, event_ndims=3).numpy(),
                             np.full([3], -4 * log_scale.sum()), rtol=1e-12)

  # Base -> data from a fresh z: reshape the kept part to [2, 2, 8], ActNorm, unsqueeze.
  z = rng.normal(size=[3, 4, 4, 4])
  kept = _depth_to_space(z[..., :2].reshape(3, 2, 2, 8) * np.exp(log_scale) + loc)
  np.testing.assert_allclose(bijector.forward(z).numpy(),
                             np.concatenate([kept, z[..., 2:]], -1), rtol=1e-12,
                             atol=1e-12)
  np.testing.assert_allclose(bijector.forward_log_det_jacobian(z, event_ndims=3).numpy(),
                             np.full([3], 4 * log_scale.sum()), rtol=1e-12)


def test_extra_batch_axes():
  rng = np.random.default_rng(1)
  bijector, loc, log_scale = _factor_out(rng, num_kept=1, channels=2)
  x = rng.normal(size=[2, 3, 4, 4, 2])
  z = bijector.inverse(x).numpy()
  flat = x.reshape(6, 4, 4, 2)
  latent = (_space_to_depth(flat[..., :1]) - loc) * np.exp(-log_scale)
  np.testing.assert_allclose(z[..., :1].reshape(6, 4, 4, 1), latent.reshape(6, 4, 4, 1),
                             rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(bijector.forward(tf.constant(z)).numpy(), x, rtol=1e-12,
                             atol=1e-12)


def test_conditional_inner_receives_the_context():
  rng = np.random.default_rng(2)
  weight, context_weight = rng.normal(size=[4, 4]), rng.normal(size=[3, 4])

  def conditioner(x_a, c):
    return tf.tanh(tf.tensordot(x_a, weight, 1)
                   + tf.tensordot(c, context_weight, 1)[:, tf.newaxis, tf.newaxis, :])

  coupling = tffb.Coupling(conditioner, tffb.AdditiveTransformer(), 8, event_ndims=3,
                           conditional=True, dtype=tf.float64, name="split_coupling")
  inner = tfb.Chain([tfb.Invert(tffb.Squeeze()), coupling])
  bijector = tffb.FactorOut(inner, 2, event_shape=[4, 4, 4])
  assert bijector.is_conditional
  x, c = rng.normal(size=[2, 4, 4, 4]), rng.normal(size=[2, 3])

  squeezed = _space_to_depth(x[..., :2])
  shift = np.tanh(squeezed[..., :4] @ weight + (c @ context_weight)[:, None, None, :])
  latent = np.concatenate([squeezed[..., :4], squeezed[..., 4:] - shift], -1)
  z = bijector.inverse(x, conditional_input=c).numpy()
  np.testing.assert_allclose(z[..., :2], latent.reshape(2, 4, 4, 2), rtol=1e-12,
                             atol=1e-12)
  np.testing.assert_array_equal(z[..., 2:], x[..., 2:])
  np.testing.assert_allclose(
      bijector.forward(tf.constant(z), conditional_input=tf.constant(c)).numpy(), x,
      rtol=1e-12, atol=1e-12)
  with pytest.raises(ValueError, match="is conditional: pass conditional_input"):
    bijector.inverse(x)


def test_not_conditional_with_a_plain_inner():
  assert not _factor_out(np.random.default_rng(3))[0].is_conditional


@pytest.mark.parametrize("num_kept", [0, 4, 5])
def test_num_kept_out_of_range_raises(num_kept):
  inner = tffb.ActNorm(np.zeros(1), np.zeros(1))
  with pytest.raises(ValueError, match=rf"num_kept must be in \[1, 3\]; got {num_kept}"):
    tffb.FactorOut(inner, num_kept, event_shape=[4, 4, 4])


def test_inner_that_changes_the_number_of_entries_raises():
  # Not a bijection: its inverse maps [4, 4, 2] events to [4, 4, 1].
  inner = tfb.Reshape(event_shape_out=[4, 4, 2], event_shape_in=[4, 4, 1])
  with pytest.raises(ValueError, match=r"inner must preserve the number of entries; "
                     r"it maps .*\[4, 4, 2\].* to .*\[4, 4, 1\]"):
    tffb.FactorOut(inner, 2, event_shape=[4, 4, 4])
