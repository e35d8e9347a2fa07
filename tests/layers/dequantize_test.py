"""tfp_flows.layers.Dequantize: closed-form densities, training noise, sample rounding."""

import math
import sys

import numpy as np
import pytest
import tensorflow as tf

import tfp_flows as tff

NUM_BITS = 3


def _model(alpha, shape=(2, 2, 1)):
  return tff.FlowModel([tff.layers.Dequantize(num_bits=NUM_BITS, alpha=alpha, seed=3)],
                       list(shape))


def _expected_log_prob(x, alpha):
  """log p(x + 1/2) by hand in float64, for a standard-normal base."""
  levels = 2.0 ** NUM_BITS
  unit = (np.asarray(x, np.float64) + 0.5) / levels    # v / 2^b, log-det -b ln 2 each
  if alpha is None:
    h, log_det = unit - 0.5, 0.0                         # Glow: shift to [-1/2, 1/2)
  else:
    p = alpha + (1 - 2 * alpha) * unit                   # Real NVP: logit
    h = np.log(p) - np.log1p(-p)
    log_det = math.log(1 - 2 * alpha) - np.log(p) - np.log1p(-p)
  per_pixel = -0.5 * h ** 2 - 0.5 * math.log(2 * math.pi) + log_det - math.log(levels)
  return per_pixel.reshape(len(x), -1).sum(-1)


@pytest.mark.parametrize("alpha", [0.05, 0.001, None])
def test_evaluation_log_prob_is_the_closed_form_at_bin_centres(alpha):
  x = np.array([[0, 1, 6, 7], [7, 7, 0, 3]], "float32").reshape(2, 2, 2, 1)
  model = _model(alpha)
  np.testing.assert_allclose(model.log_prob(x).numpy(), _expected_log_prob(x, alpha),
                             rtol=1e-5)
  assert tff.layers.Dequantize.from_config(
      model.flow_layers[0].get_config()).alpha == alpha


@pytest.mark.parametrize("alpha", [0.05, None])
def test_training_noise_is_uniform_in_each_bin(alpha):
  # Data -> base in training maps x + u; mapping the output back (forward) recovers
  # x + u, so u = forward(z) - x must lie in [0, 1) with mean 1/2 and variance 1/12
  # (4096 draws: 5 standard errors are 0.023 and 0.007).
  model = _model(alpha, shape=(8, 8, 1))
  layer = model.flow_layers[0]
  x = np.random.default_rng(0).integers(0, 2 ** NUM_BITS, size=[64, 8, 8, 1])
  x = x.astype("float32")
  z, _ = layer(tf.constant(x), training=True)
  u = layer.bijector.forward(tf.constant(z.numpy())).numpy().astype(np.float64) - x
  assert u.min() > -1e-4 and u.max() < 1 + 1e-4
  assert abs(u.mean() - 0.5) < 0.023
  assert abs(u.var() - 1 / 12) < 0.007
  z_again, _ = layer(tf.constant(x), training=True)
  assert np.abs(z_again.numpy() - z.numpy()).max() > 0
  np.testing.assert_array_equal(layer(tf.constant(x), training=False)[0].numpy(),
                                layer(tf.constant(x), training=False)[0].numpy())


def test_samples_are_floored_and_clipped_to_the_pixel_range():
  layer = _model(0.05).flow_layers[0]
  out = layer.postprocess_sample(tf.constant([-3.0, 0.2, 6.99, 7.5, 100.0])).numpy()
  np.testing.assert_array_equal(out, [0.0, 0.0, 6.0, 7.0, 7.0])


@pytest.mark.parametrize("num_bits", [0, 17])
def test_bad_num_bits_is_rejected(num_bits):
  with pytest.raises(ValueError, match=r"num_bits must be in \[1, 16\]"):
    tff.layers.Dequantize(num_bits=num_bits)


@pytest.mark.parametrize("alpha", [-0.1, 0.5])
def test_bad_alpha_is_rejected(alpha):
  with pytest.raises(ValueError, match=r"alpha must be in \[0, 0.5\)"):
    tff.layers.Dequantize(alpha=alpha)


# Pixels outside [0, 2**NUM_BITS) = [0, 8) or not integers; each goes into row 1 of 3.
BAD_PIXELS = [8.0, -1.0, 2.5, 255.0, float("nan"), float("inf")]
COMPILED_BAD_PIXELS = [8.0, 2.5, float("nan")]  # fewer compilations
_RANGE_MESSAGE = r"pixel values must be integers in \[0, 8\) \(num_bits=3\)"


def _rows_with(bad):
  x = np.array([[0, 1, 6, 7], [7, 7, 0, 3], [2, 5, 4, 1]], "float32").reshape(3, 2, 2, 1)
  x[1, 0, 1, 0] = bad
  return x


@pytest.mark.parametrize("alpha", [0.05, None])
@pytest.mark.parametrize("bad", BAD_PIXELS)
def test_bad_pixels_raise_eagerly_and_in_graphs(bad, alpha):
  model = _model(alpha)
  x = _rows_with(bad)
  with pytest.raises(tf.errors.InvalidArgumentError, match=_RANGE_MESSAGE):
    model.log_prob(x)
  if bad in COMPILED_BAD_PIXELS:
    graph = tf.function(lambda x: model(x, training=True))
    with pytest.raises(tf.errors.InvalidArgumentError, match=_RANGE_MESSAGE):
      graph(tf.constant(x))


@pytest.mark.parametrize("alpha", [0.05, None])
@pytest.mark.parametrize("bad", COMPILED_BAD_PIXELS)
def test_bad_pixels_give_nan_rows_under_xla(bad, alpha):
  # XLA cannot raise: the bad row's log_prob is NaN (with alpha=None it used to be a
  # finite number), in evaluation and in training; the other rows keep their values.
  model = _model(alpha)
  x = _rows_with(bad)
  for training in (False, True):
    compiled = tf.function(lambda x: model(x, training=training), jit_compile=True)
    got = compiled(tf.constant(x)).numpy()
    assert np.isnan(got[1]), (training, got)
    assert np.all(np.isfinite(got[[0, 2]]))
    if not training:
      np.testing.assert_allclose(got[[0, 2]], _expected_log_prob(x[[0, 2]], alpha),
                                 rtol=1e-5)


def test_integer_pixels_of_any_dtype_are_accepted():
  model = _model(0.05)
  x = np.array([[0, 1, 6, 7], [7, 7, 0, 3]]).reshape(2, 2, 2, 1)
  for dtype in ("uint8", "int32", "float64"):
    np.testing.assert_allclose(model.log_prob(x.astype(dtype)).numpy(),
                               _expected_log_prob(x, 0.05), rtol=1e-5)


if __name__ == "__main__":
  # `main` of this file's py_test: under `bazel test` run the tests, not just the import.
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
