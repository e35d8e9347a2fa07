"""Edge cases of the elementwise transformers against closed forms and finite differences."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tfp_flows.bijectors import transformers
from tests.testing import transformer_reference

SIGMOID_2 = transformer_reference.SIGMOID_2

TRANSFORMERS = {
    "affine_sigmoid": transformers.AffineTransformer(scale="sigmoid"),
    "affine_exp": transformers.AffineTransformer(scale="exp", clamp=1.5),
    "additive": transformers.AdditiveTransformer(),
}


def _numpy_forward(name, x, params):
  """(y, log|dy/dx|) from each transformer's documented formula."""
  if name == "affine_exp":
    return transformer_reference.numpy_transform("exp", x, params, clamp=1.5)
  return transformer_reference.numpy_transform(name.replace("affine_", ""), x, params)


@pytest.mark.parametrize("name", sorted(TRANSFORMERS))
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_zero_params_give_the_identity(name, dtype):
  t = TRANSFORMERS[name]
  x = tf.constant(np.random.default_rng(0).normal(size=[3, 4]), dtype)
  params = tf.zeros([3, 4, t.num_params], dtype)
  for direction in (t.forward, t.inverse):
    y, log_det = direction(x, params)
    assert y.dtype == dtype and log_det.dtype == dtype
    np.testing.assert_allclose(y.numpy(), x.numpy(),
                               rtol=1e-6 if dtype == tf.float32 else 1e-14)
    np.testing.assert_allclose(log_det.numpy(), np.zeros([3, 4]),
                               atol=1e-7 if dtype == tf.float32 else 1e-15)


@pytest.mark.parametrize("name", sorted(TRANSFORMERS))
def test_forward_matches_formula_and_inverse_undoes_it(name):
  t = TRANSFORMERS[name]
  rng = np.random.default_rng(1)
  x = rng.normal(size=[2, 5])
  params = 2.0 * rng.normal(size=[2, 5, t.num_params])
  y, log_det = t.forward(tf.constant(x), tf.constant(params))
  expected_y, expected_log_det = _numpy_forward(name, x, params)
  np.testing.assert_allclose(y.numpy(), expected_y, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(log_det.numpy(), expected_log_det, rtol=1e-12, atol=1e-12)
  x_back, inverse_log_det = t.inverse(tf.constant(y.numpy()), tf.constant(params))
  np.testing.assert_allclose(x_back.numpy(), x, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(inverse_log_det.numpy(), -expected_log_det, rtol=1e-12,
                             atol=1e-12)


@pytest.mark.parametrize("name", sorted(TRANSFORMERS))
def test_log_det_matches_central_difference(name):
  t = TRANSFORMERS[name]
  rng = np.random.default_rng(2)
  x = rng.normal(size=[7])
  params = tf.constant(rng.normal(size=[7, t.num_params]))
  eps = 1e-6
  plus = t.forward(tf.constant(x + eps), params)[0].numpy()
  minus = t.forward(tf.constant(x - eps), params)[0].numpy()
  np.testing.assert_allclose(t.forward(tf.constant(x), params)[1].numpy(),
                             np.log((plus - minus) / (2 * eps)), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("clamp", [2.0, 5.0])
def test_affine_sigmoid_scale_is_bounded_in_both_directions(clamp):
  """Training (inverse) expands by at most 1/sigmoid(2); sampling by at most e^clamp."""
  t = transformers.AffineTransformer(scale="sigmoid", clamp=clamp)
  h = np.concatenate([np.linspace(-30.0, 30.0, 121), [-1e4, 1e4]])
  params = tf.constant(np.stack([h, np.zeros_like(h)], -1))
  z, inverse_log_det = t.inverse(tf.ones_like(h), params)
  sigma = z.numpy()  # data -> base multiplies 1 by sigma
  np.testing.assert_allclose(np.exp(inverse_log_det.numpy()), sigma, rtol=1e-12)
  floor = math.exp(-clamp)
  top = floor + (1.0 - floor) / SIGMOID_2
  assert np.all(sigma > floor * (1 - 1e-12)) and np.all(sigma <= top * (1 + 1e-12))
  np.testing.assert_allclose(sigma[-2], floor, rtol=1e-12)   # h = -1e4
  np.testing.assert_allclose(sigma[-1], top, rtol=1e-12)     # h = +1e4
  assert np.all(np.diff(sigma[:-2]) > 0)  # increasing in h
  x, forward_log_det = t.forward(tf.ones_like(h), params)
  assert np.all(np.isfinite(x.numpy()))
  assert np.all(x.numpy() <= math.exp(clamp) * (1 + 1e-12))
  np.testing.assert_allclose(forward_log_det.numpy(), -inverse_log_det.numpy(), rtol=1e-12)


def test_affine_sigmoid_training_direction_does_not_blow_up_where_the_old_map_did():
  """Regression (issue 12): the data -> base side divided by sigmoid(h + 2) / sigmoid(2).

  With h = -8 the old map sent a pixel of 1 to 1 / 0.0028 = 358 in one coupling; a few
  such couplings gave latents of 1e3 and a batch loss of 152 bits/dim.
  """
  t = transformers.AffineTransformer(scale="sigmoid")
  params = tf.constant([[-8.0, 0.0]], tf.float64)
  z, log_det = t.inverse(tf.constant([1.0], tf.float64), params)
  assert 0.0 < z.numpy()[0] < 1.0 and log_det.numpy()[0] < 0.0


def test_affine_exp_log_scale_is_soft_clamped():
  t = transformers.AffineTransformer(scale="exp", clamp=2.0)
  h = np.array([-1e3, -5.0, -0.1, 0.0, 0.1, 5.0, 1e3])
  params = tf.constant(np.stack([h, np.zeros_like(h)], -1))
  log_det = t.forward(tf.ones([7], tf.float64), params)[1].numpy()
  np.testing.assert_allclose(log_det, 2.0 * np.tanh(h / 2.0), rtol=1e-12)
  assert np.all(np.abs(log_det) <= 2.0)
  assert np.all(np.abs(log_det[1:-1]) < 2.0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(scale="softplus"), "scale must be 'sigmoid' or 'exp'; got 'softplus'"),
    (dict(scale="exp", clamp=0.0), "clamp must be positive; got 0.0"),
    (dict(scale="exp", clamp=-1), "clamp must be positive; got -1"),
])
def test_constructor_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    transformers.AffineTransformer(**kwargs)


def test_config_equality_and_hash():
  a = transformers.AffineTransformer(scale="exp", clamp=2)
  b = transformers.AffineTransformer(scale="exp", clamp=2.0)
  assert a.get_config() == {"scale": "exp", "clamp": 2.0}
  assert a == b and hash(a) == hash(b)
  assert a != transformers.AffineTransformer(scale="exp", clamp=3.0)
  assert a != transformers.AffineTransformer(scale="sigmoid", clamp=2.0)
  assert transformers.AdditiveTransformer() == transformers.AdditiveTransformer()
  assert transformers.AdditiveTransformer() != a
  assert [t.num_params for t in (a, transformers.AdditiveTransformer())] == [2, 1]


@pytest.mark.parametrize("scale", ["sigmoid", "exp"])
def test_affine_scale_maps_log_det_equals_autodiff_in_both_directions(scale):
  """log|dy/dx| of each scale map against tf.GradientTape's elementwise derivative."""
  t = transformers.AffineTransformer(scale=scale, clamp=2.0)
  rng = np.random.default_rng(3)
  x = tf.constant(rng.normal(size=[4, 6]))
  params = tf.constant(3.0 * rng.normal(size=[4, 6, 2]))
  for direction in (t.forward, t.inverse):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y, log_det = direction(x, params)
    derivative = tape.gradient(y, x)  # elementwise map: the Jacobian is diagonal
    np.testing.assert_allclose(log_det.numpy(), np.log(np.abs(derivative.numpy())),
                               rtol=1e-12, atol=1e-12)
