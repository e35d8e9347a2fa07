"""tfp_flows.bijectors.Permute against stock tfb.Permute, and what XLA makes of the reversal."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_flows import bijectors as tffb
from tfp_flows import layers

tfb = tfp.bijectors

_PERMUTATIONS = [[4, 3, 2, 1, 0], [1, 0], [0], [2, 0, 4, 1, 3], [0, 1, 2]]


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


def test_only_a_static_reversal_of_the_last_axis_reverses():
  assert tffb.Permute([3, 2, 1, 0])._reverses  # pylint: disable=protected-access
  assert tffb.Permute([3, 2, 1, 0]).copy()._reverses  # pylint: disable=protected-access
  assert not tffb.Permute([0, 2, 1, 3])._reverses  # pylint: disable=protected-access
  assert not tffb.Permute(tf.Variable([1, 0]))._reverses  # pylint: disable=protected-access
  assert not tffb.Permute([1, 0], axis=-2)._reverses  # pylint: disable=protected-access
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
  return {op: hlo.count(f" {op}(") for op in ("gather", "scatter", "reverse")}


def test_the_reversal_compiles_to_no_gather_or_scatter_under_xla():
  ours = _xla_value_and_gradient_ops(tffb.Permute([3, 2, 1, 0]), 4)
  assert ours["gather"] == 0 and ours["scatter"] == 0, ours
  stock = _xla_value_and_gradient_ops(tfb.Permute([3, 2, 1, 0]), 4)
  assert stock["gather"] > 0, stock


def test_the_permute_layer_builds_the_reversing_bijector():
  reversed_layer = layers.Permute("reversed")
  reversed_layer.build((None, 5))
  bijector = reversed_layer.bijector
  assert isinstance(bijector, tffb.Permute) and isinstance(bijector, tfb.Permute)
  assert bijector._reverses  # pylint: disable=protected-access
  random_layer = layers.Permute("random", seed=3)
  random_layer.build((None, 5))
  assert not random_layer.bijector._reverses  # pylint: disable=protected-access
  x = np.random.default_rng(4).normal(size=(6, 5)).astype(np.float32)
  z, log_det = reversed_layer(x)
  np.testing.assert_array_equal(z.numpy(), x[:, ::-1])
  np.testing.assert_array_equal(log_det.numpy(), np.zeros(6, np.float32))
