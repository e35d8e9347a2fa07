"""tfp_flows.bijectors.Permute against stock tfb.Permute, and what XLA makes of its slices."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_flows import bijectors as tffb
from tfp_flows import layers

tfb = tfp.bijectors

# Sliced (at most 8 entries): reversals, a swap, the identity, a shuffle with a run;
# gathered: a 9-entry reversal.
_PERMUTATIONS = [[4, 3, 2, 1, 0], [1, 0], [0], [2, 0, 4, 1, 3], [0, 1, 2], [5, 6, 7, 0, 1, 2, 3, 4],
                 list(range(9))[::-1]]


@pytest.mark.parametrize("permutation", _PERMUTATIONS)
@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_equals_stock_permute(permutation, mode, dtype):
  x = np.random.default_rng(0).normal(size=(3, 2, len(permutation))).astype(dtype)
  ours, stock = tffb.Permute(permutation), tfb.Permute(permutation)

  def run(fn):
    if mode != "eager":
      fn = tf.function(fn, jit_compile=mode == "xla")
    return fn(tf.constant(x)).numpy()

  for direction in ("forward", "inverse"):
    np.testing.assert_array_equal(run(getattr(ours, direction)),
                                  run(getattr(stock, direction)))
  np.testing.assert_array_equal(run(ours.forward), x[..., permutation])
  np.testing.assert_array_equal(run(lambda v: ours.inverse(ours.forward(v))), x)
  assert float(ours.forward_log_det_jacobian(x, event_ndims=1)) == 0.0
  assert float(ours.inverse_log_det_jacobian(x, event_ndims=1)) == 0.0


def _sliced(bijector):
  return bijector._forward_runs is not None  # pylint: disable=protected-access


def test_only_a_static_short_last_axis_is_sliced():
  assert _sliced(tffb.Permute([3, 2, 1, 0])) and _sliced(tffb.Permute([3, 2, 1, 0]).copy())
  assert tffb.Permute([2, 3, 0, 1])._forward_runs == ((2, 4), (0, 2))  # pylint: disable=protected-access
  assert _sliced(tffb.Permute(list(range(8))[::-1]))
  assert not _sliced(tffb.Permute(list(range(9))[::-1]))
  assert not _sliced(tffb.Permute(tf.Variable([1, 0])))
  assert not _sliced(tffb.Permute([1, 0], axis=-2))
  x = np.arange(12.0).reshape(1, 2, 2, 3)
  np.testing.assert_array_equal(tffb.Permute([1, 0], axis=-2).forward(x).numpy(),
                                x[..., ::-1, :])
  variable = tffb.Permute(tf.Variable([1, 0]))
  np.testing.assert_array_equal(variable.forward(x[..., :2]).numpy(), x[..., 1::-1])


def _xla_value_and_gradient_ops(bijector, dims):
  """HLO op counts of the value and gradient of a coupling-shaped use of `bijector`."""
  kernel = tf.constant(np.random.default_rng(1).normal(size=(dims, dims)), tf.float32)

  @tf.function(jit_compile=True)
  def value_and_gradient(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = bijector.forward(tf.tanh(tf.matmul(x, kernel)))
      loss = tf.reduce_sum(tf.square(y[..., :1]) + y[..., 1:])
    return loss, tape.gradient(loss, x)

  x = tf.zeros([8, dims])
  hlo = value_and_gradient.experimental_get_compiler_ir(x)(stage="optimized_hlo")
  return {op: hlo.count(f" {op}(") for op in ("gather", "scatter")}


def test_a_short_permutation_compiles_to_no_gather_or_scatter_under_xla():
  ours = _xla_value_and_gradient_ops(tffb.Permute([3, 2, 1, 0]), 4)
  assert ours["gather"] == 0 and ours["scatter"] == 0, ours
  stock = _xla_value_and_gradient_ops(tfb.Permute([3, 2, 1, 0]), 4)
  assert stock["gather"] > 0, stock


def test_the_permute_layer_builds_it():
  for size, sliced in [(5, True), (12, False)]:
    reversed_layer = layers.Permute("reversed")
    reversed_layer.build((None, size))
    bijector = reversed_layer.bijector
    assert isinstance(bijector, tffb.Permute) and isinstance(bijector, tfb.Permute)
    assert _sliced(bijector) == sliced
    x = np.random.default_rng(4).normal(size=(6, size)).astype(np.float32)
    z, log_det = reversed_layer(x)
    np.testing.assert_array_equal(z.numpy(), x[:, ::-1])
    np.testing.assert_array_equal(log_det.numpy(), np.zeros(6, np.float32))
