"""Edge cases of tfp_flows.bijectors.Coupling and checkerboard_mask against numpy."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tfp_flows import bijectors as tffb
from tests.testing import transformer_reference

TRANSFORMERS = {
    "sigmoid": tffb.AffineTransformer(scale="sigmoid"),
    "exp": tffb.AffineTransformer(scale="exp"),  # clamp 2
    "additive": tffb.AdditiveTransformer(),
}


def _numpy_transform(name, x, params):
  """Elementwise (y, log|dy/dx|) of each transformer, from its documented formula."""
  return transformer_reference.numpy_transform(name, x, params)


def _linear_conditioner(weight, context_weight=None):
  """tanh(x_a @ W [+ c @ V]) on the last axis (works for any batch rank)."""
  def conditioner(x_a, conditional_input=None):
    h = tf.tensordot(x_a, weight, 1)
    if conditional_input is not None:
      h += tf.tensordot(conditional_input, context_weight, 1)
    return tf.tanh(h)
  return conditioner


@pytest.mark.parametrize("name", sorted(TRANSFORMERS))
@pytest.mark.parametrize("reverse", [False, True])
def test_channel_split_matches_numpy(name, reverse):
  rng = np.random.default_rng(0)
  transformer = TRANSFORMERS[name]
  k, channels = 2, 5
  kept_slice, moved_slice = ((slice(k, None), slice(None, k)) if reverse
                             else (slice(None, k), slice(k, None)))
  num_kept = channels - k if reverse else k
  num_moved = channels - num_kept
  weight = 2.0 * rng.normal(size=[num_kept, num_moved * transformer.num_params])
  x = rng.normal(size=[2, 3, channels])  # two batch axes
  bijector = tffb.Coupling(_linear_conditioner(weight), transformer, channels,
                           split_index=k, reverse=reverse, dtype=tf.float64)

  params = np.tanh(x[..., kept_slice] @ weight).reshape(
      [2, 3, num_moved, transformer.num_params])
  moved, log_det = _numpy_transform(name, x[..., moved_slice], params)
  expected = x.copy()
  expected[..., moved_slice] = moved
  y = bijector.forward(x).numpy()
  np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
  np.testing.assert_array_equal(y[..., kept_slice], x[..., kept_slice])
  np.testing.assert_allclose(bijector.forward_log_det_jacobian(x, event_ndims=1).numpy(),
                             log_det.sum(-1), rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(bijector.inverse(tf.constant(y)).numpy(), x, rtol=1e-12,
                             atol=1e-12)
  np.testing.assert_allclose(
      bijector.inverse_log_det_jacobian(tf.constant(y), event_ndims=1).numpy(),
      -log_det.sum(-1), rtol=1e-12, atol=1e-12)


def test_mask_coupling_keeps_masked_entries_and_matches_numpy():
  rng = np.random.default_rng(1)
  transformer = TRANSFORMERS["sigmoid"]
  mask = tffb.checkerboard_mask(4, 4, channels=1, parity=0, dtype=tf.float64)  # broadcasts
  weight = rng.normal(size=[32, 4 * 4 * 2 * 2]) / 3.0

  def conditioner(masked):
    h = tf.tanh(tf.reshape(masked, [-1, 32]) @ weight)
    return tf.reshape(h, [-1, 4, 4, 4])

  bijector = tffb.Coupling(conditioner, transformer, num_channels=2, event_ndims=3,
                           mask=mask, dtype=tf.float64)
  x = rng.normal(size=[3, 4, 4, 2])
  keep = np.broadcast_to(mask.numpy(), x.shape) > 0
  params = np.tanh((x * keep).reshape(3, 32) @ weight).reshape(3, 4, 4, 2, 2)
  moved, log_det = _numpy_transform("sigmoid", x, params)
  expected = np.where(keep, x, moved)

  y = bijector.forward(x).numpy()
  np.testing.assert_array_equal(y[keep], x[keep])
  assert np.min(np.abs(y[~keep] - x[~keep])) > 0
  np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(bijector.forward_log_det_jacobian(x, event_ndims=3).numpy(),
                             np.where(keep, 0.0, log_det).sum(axis=(1, 2, 3)), rtol=1e-12)
  np.testing.assert_allclose(bijector.inverse(tf.constant(y)).numpy(), x, rtol=1e-12,
                             atol=1e-12)


def test_checkerboard_mask_values():
  rows, cols = np.meshgrid(np.arange(3), np.arange(5), indexing="ij")
  even = ((rows + cols) % 2 == 0).astype(np.float32)
  mask = tffb.checkerboard_mask(3, 5, channels=2)
  assert mask.dtype == tf.float32 and mask.shape == (3, 5, 2)
  np.testing.assert_array_equal(mask.numpy(), np.stack([even, even], -1))
  odd = tffb.checkerboard_mask(3, 5, parity=1, dtype=tf.float64)
  assert odd.dtype == tf.float64
  np.testing.assert_array_equal(odd.numpy()[..., 0], 1.0 - even)
  assert odd.numpy()[0, 0, 0] == 0.0 and odd.numpy()[0, 1, 0] == 1.0
  with pytest.raises(ValueError, match="parity must be 0 or 1; got 2"):
    tffb.checkerboard_mask(2, 2, parity=2)


@pytest.mark.parametrize("name", sorted(TRANSFORMERS))
@pytest.mark.parametrize("split", ["channels", "mask"])
def test_zero_conditioner_output_is_the_identity(name, split):
  transformer = TRANSFORMERS[name]
  x = np.random.default_rng(2).normal(size=[2, 2, 2, 4])
  zeros = lambda x_a: tf.zeros(tf.concat(
      [tf.shape(x_a)[:-1], [(4 if split == "mask" else 2) * transformer.num_params]], 0),
      x_a.dtype)
  mask = tffb.checkerboard_mask(2, 2, 4, dtype=tf.float64) if split == "mask" else None
  bijector = tffb.Coupling(zeros, transformer, 4, event_ndims=3, mask=mask,
                           dtype=tf.float64)
  np.testing.assert_allclose(bijector.forward(x).numpy(), x, rtol=1e-14)
  np.testing.assert_allclose(bijector.inverse(x).numpy(), x, rtol=1e-14)
  np.testing.assert_allclose(bijector.forward_log_det_jacobian(x, event_ndims=3).numpy(),
                             np.zeros(2), atol=1e-14)


def test_conditional_input_reaches_the_conditioner():
  rng = np.random.default_rng(3)
  weight, context_weight = rng.normal(size=[2, 4]), rng.normal(size=[3, 4])
  bijector = tffb.Coupling(_linear_conditioner(weight, context_weight),
                           TRANSFORMERS["exp"], 4, conditional=True, dtype=tf.float64)
  assert bijector.is_conditional
  x, c = rng.normal(size=[2, 4]), rng.normal(size=[2, 3])
  params = np.tanh(x[:, :2] @ weight + c @ context_weight).reshape(2, 2, 2)
  moved, log_det = _numpy_transform("exp", x[:, 2:], params)
  y = bijector.forward(x, conditional_input=c).numpy()
  np.testing.assert_allclose(y, np.concatenate([x[:, :2], moved], -1), rtol=1e-12)
  np.testing.assert_allclose(
      bijector.forward_log_det_jacobian(x, event_ndims=1, conditional_input=c).numpy(),
      log_det.sum(-1), rtol=1e-12)
  np.testing.assert_allclose(
      bijector.inverse(tf.constant(y), conditional_input=tf.constant(c)).numpy(), x,
      rtol=1e-12)
  other = bijector.forward(x, conditional_input=c + 1.0).numpy()
  assert np.min(np.abs(other[:, 2:] - y[:, 2:])) > 1e-6


def test_conditional_flag_is_enforced():
  conditioner = _linear_conditioner(np.ones([2, 4]), np.ones([1, 4]))
  plain = tffb.Coupling(conditioner, TRANSFORMERS["exp"], 4, dtype=tf.float64)
  assert not plain.is_conditional
  with pytest.raises(ValueError, match="got a conditional_input but was built with "
                     "conditional=False"):
    plain.forward(np.ones([1, 4]), conditional_input=np.ones([1, 1]))
  conditional = tffb.Coupling(conditioner, TRANSFORMERS["exp"], 4, conditional=True,
                              dtype=tf.float64)
  with pytest.raises(ValueError, match="is conditional: pass conditional_input"):
    conditional.inverse(np.ones([1, 4]))


def _ok_conditioner(x_a):
  return tf.zeros(tf.concat([tf.shape(x_a)[:-1], [4]], 0))


@pytest.mark.parametrize("kwargs,match", [
    (dict(split_index=0), r"split_index must be in \[1, 3\] for 4 channels; got 0"),
    (dict(split_index=4), r"split_index must be in \[1, 3\] for 4 channels; got 4"),
    (dict(num_channels=1), "use a mask for a single-channel input"),
    (dict(conditioner="net"), "conditioner must be callable; got 'net'"),
    (dict(transformer="affine"), "transformer must be a tfp_flows.bijectors.transformers"),
    (dict(event_ndims=0), "event_ndims must be at least 1; got 0"),
])
def test_constructor_errors(kwargs, match):
  args = dict(conditioner=_ok_conditioner, transformer=TRANSFORMERS["exp"],
              num_channels=4)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    tffb.Coupling(**args)


def test_mask_split_ignores_split_index_and_default_split_is_half():
  # A single-channel image can only be split by a mask; split_index is then unused.
  mask = tffb.checkerboard_mask(2, 2, 1)
  shift_one = lambda x: tf.stack([tf.zeros_like(x[..., 0]), tf.ones_like(x[..., 0])], -1)
  single = tffb.Coupling(shift_one, TRANSFORMERS["exp"], 1, event_ndims=3, mask=mask,
                         split_index=7)
  np.testing.assert_array_equal(single.forward(np.zeros([1, 2, 2, 1], np.float32)).numpy(),
                                1.0 - mask.numpy()[np.newaxis])
  # Default split of 4 channels keeps 2 and moves 2: the conditioner sees 2 channels.
  seen = []
  bijector = tffb.Coupling(lambda x_a: seen.append(x_a.shape[-1]) or _ok_conditioner(x_a),
                           TRANSFORMERS["exp"], 4)
  np.testing.assert_array_equal(bijector.forward(np.ones([1, 4], np.float32)).numpy(),
                                np.ones([1, 4]))
  assert seen == [2]


def test_shape_errors():
  bijector = tffb.Coupling(_ok_conditioner, TRANSFORMERS["exp"], 4)
  with pytest.raises(ValueError, match=r"Coupling expects 4 channels.*\[2, 5\]"):
    bijector.forward(np.ones([2, 5], np.float32))
  wrong = tffb.Coupling(lambda x_a: tf.zeros([2, 3]), TRANSFORMERS["exp"], 4)
  with pytest.raises(ValueError, match=r"must return 2 x 2 = 4 values.*\[2, 3\]"):
    wrong.forward(np.ones([2, 4], np.float32))


def test_validate_args_rejects_non_finite_values():
  nan_conditioner = lambda x_a: tf.fill(tf.concat([tf.shape(x_a)[:-1], [4]], 0), np.nan)
  bad = tffb.Coupling(nan_conditioner, TRANSFORMERS["exp"], 4, validate_args=True)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="Coupling: conditioner output is not finite"):
    bad.forward(np.ones([1, 4], np.float32))
  good = tffb.Coupling(_ok_conditioner, TRANSFORMERS["exp"], 4, validate_args=True)
  with pytest.raises(tf.errors.InvalidArgumentError, match="Coupling: input is not finite"):
    good.inverse(np.array([[1.0, np.inf, 0.0, 0.0]], np.float32))
  np.testing.assert_array_equal(good.forward(np.ones([1, 4], np.float32)).numpy(),
                                np.ones([1, 4]))


def test_log_prob_runs_the_conditioner_once_and_matches_separate_calls():
  # TransformedDistribution.log_prob asks for inverse(y) and ildj(y) separately; the
  # coupling computes both in one conditioner pass and TFP's cache serves the second.
  import tensorflow_probability as tfp  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(3)
  weight = tf.constant(rng.normal(size=[2, 4]), tf.float64)
  calls = []

  def conditioner(x_a):
    calls.append(1)
    return tf.tanh(tf.tensordot(x_a, weight, 1))

  bijector = tffb.Coupling(conditioner, tffb.AffineTransformer(scale="exp"),
                           num_channels=4, dtype=tf.float64)
  base = tfp.distributions.Sample(tfp.distributions.Normal(np.float64(0), 1.0), [4])
  distribution = tfp.distributions.TransformedDistribution(base, bijector)
  y = tf.constant(rng.normal(size=[5, 4]))
  log_prob = distribution.log_prob(y).numpy()
  assert len(calls) == 1
  x = bijector.inverse(tf.identity(y)).numpy()
  ildj = bijector.inverse_log_det_jacobian(tf.identity(y), event_ndims=1).numpy()
  assert len(calls) == 3  # fresh tensors: no cache, inverse and ildj each run it
  np.testing.assert_allclose(log_prob, base.log_prob(x).numpy() + ildj, rtol=1e-12)
