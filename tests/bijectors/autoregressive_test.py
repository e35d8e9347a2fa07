"""tfp_flows.bijectors.Autoregressive with a hand-written autoregressive conditioner."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tests.testing import bijector_checks
from tfp_flows import bijectors as tffb

tfb = tfp.bijectors
tfd = tfp.distributions
D = 4


def _conditioner(dtype, num_params, order=None, context_size=None, seed=0):
  """tanh(W_masked y [+ V c]) with row i reading only coordinates earlier in `order`."""
  rng = np.random.default_rng(seed)
  order = np.arange(D) if order is None else np.asarray(order)
  rank = np.empty(D, int)
  rank[order] = np.arange(D)  # rank[j]: position of coordinate j in the ordering
  mask = (rank[None, :] < rank[:, None]).astype("float64")  # [i, j]: j before i
  weight = tf.constant(rng.normal(size=[num_params, D, D]) * mask, dtype)
  bias = tf.constant(rng.normal(size=[D, num_params]) * 0.5, dtype)
  context_weight = (None if context_size is None else
                    tf.constant(rng.normal(size=[context_size, D, num_params]), dtype))

  def conditioner(y, conditional_input=None):
    h = tf.einsum("pij,...j->...ip", weight, y) + bias
    if conditional_input is not None:
      h += tf.einsum("cip,...c->...ip", context_weight, conditional_input)
    return tf.tanh(h)
  return conditioner


TRANSFORMERS = {"affine": tffb.AffineTransformer(scale="exp"),
                "additive": tffb.AdditiveTransformer()}


@pytest.mark.parametrize("name", sorted(TRANSFORMERS))
@pytest.mark.parametrize("order", [None, [2, 0, 3, 1]])
@pytest.mark.parametrize("dtype", [tf.float64, tf.float32])
def test_bijective_with_autodiff_log_det(name, order, dtype):
  transformer = TRANSFORMERS[name]
  bijector = tffb.Autoregressive(_conditioner(dtype, transformer.num_params, order),
                                 transformer, D, dtype=dtype)
  x = tf.constant(np.random.default_rng(1).normal(size=[6, D]), dtype)
  bijector_checks.assert_bijective_and_log_det(bijector, x, event_ndims=1)


def test_density_direction_is_one_pass_and_sampling_is_event_size_passes():
  calls = []
  inner = _conditioner(tf.float64, 2)

  def counting(y):
    calls.append(1)
    return inner(y)

  bijector = tffb.Autoregressive(counting, TRANSFORMERS["affine"], D, dtype=tf.float64)
  y = tf.constant(np.random.default_rng(2).normal(size=[3, D]))
  base = tfd.Sample(tfd.Normal(np.float64(0), 1.0), [D])
  tfd.TransformedDistribution(base, bijector).log_prob(y)
  assert len(calls) == 1
  calls.clear()
  tf.function(bijector.forward)(y)  # traced: the while-loop body is traced once
  assert len(calls) == 1


def test_conditional_and_batch_shapes():
  transformer = TRANSFORMERS["affine"]
  bijector = tffb.Autoregressive(_conditioner(tf.float64, 2, context_size=3), transformer,
                                 D, conditional=True, dtype=tf.float64)
  rng = np.random.default_rng(3)
  x = tf.constant(rng.normal(size=[2, 5, D]))
  context = tf.constant(rng.normal(size=[2, 5, 3]))
  out = bijector_checks.assert_bijective_and_log_det(
      bijector, x, event_ndims=1, conditional_input=context)
  other = bijector.forward(x, conditional_input=context + 1.0).numpy()
  assert np.all(np.abs(other - out["y"]).max(axis=-1) > 1e-3)  # context matters per row
  with pytest.raises(ValueError, match="conditional_input must be given"):
    bijector.forward(x)


def test_inverse_autoregressive_flow_through_invert():
  transformer = TRANSFORMERS["affine"]
  maf = tffb.Autoregressive(_conditioner(tf.float64, 2), transformer, D, dtype=tf.float64)
  iaf = tfb.Invert(maf)
  x = tf.constant(np.random.default_rng(4).normal(size=[5, D]))
  bijector_checks.assert_bijective_and_log_det(iaf, x, event_ndims=1)
  np.testing.assert_allclose(iaf.forward(x).numpy(), maf.inverse(x).numpy(), rtol=1e-12)


def test_xla_matches_eager_in_both_directions():
  transformer = TRANSFORMERS["affine"]
  bijector = tffb.Autoregressive(_conditioner(tf.float32, 2), transformer, D)
  x = tf.constant(np.random.default_rng(5).normal(size=[7, D]), tf.float32)

  def both(x):
    y = bijector.forward(x)
    return y, bijector.forward_log_det_jacobian(x, 1), bijector.inverse(y)

  y, fldj, x_back = bijector_checks.assert_xla_matches_eager(both, x, atol=1e-5)
  np.testing.assert_allclose(x_back, x.numpy(), atol=1e-5)


def test_zero_conditioner_is_identity():
  bijector = tffb.Autoregressive(lambda y: tf.zeros(tf.concat([tf.shape(y), [2]], 0)),
                                 TRANSFORMERS["affine"], D)
  x = tf.constant(np.random.default_rng(6).normal(size=[3, D]), tf.float32)
  np.testing.assert_array_equal(bijector.forward(x).numpy(), x.numpy())
  np.testing.assert_array_equal(bijector.forward_log_det_jacobian(x, 1).numpy(), 0.0)


def test_argument_errors():
  with pytest.raises(ValueError, match="conditioner must be callable"):
    tffb.Autoregressive(None, TRANSFORMERS["affine"], D)
  with pytest.raises(ValueError, match="transformer must be"):
    tffb.Autoregressive(lambda y: y, "affine", D)
  with pytest.raises(ValueError, match="event_size must be a positive int"):
    tffb.Autoregressive(lambda y: y, TRANSFORMERS["affine"], 0)
  bijector = tffb.Autoregressive(lambda y: tf.zeros(tf.concat([tf.shape(y), [3]], 0)),
                                 TRANSFORMERS["affine"], D)
  with pytest.raises(ValueError, match=r"must return shape \[..., 4, 2\]"):
    bijector.inverse(tf.zeros([2, D]))
  with pytest.raises(ValueError, match="expects events of size 4"):
    bijector.inverse(tf.zeros([2, 3]))
