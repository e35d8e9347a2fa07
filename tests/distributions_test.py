"""PhiloxNormal draws tfd.Normal's numbers, without the auto_select key derivation.

Under XLA a stateless normal left at TF's default algorithm ("auto_select") derives its
key and counter with a `StatelessRandomGetKeyCounter` op and then cost 15x the draw with
"philox" named (benchmarks/RESULTS.md); the flow's default base drew that way, so the
sample graphs must hold no such op. The reference for every value is stock
`tfd.Normal` with the same seed.
"""

import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_flows as tff
from tests.testing import graph_ops

tfd = tfp.distributions


def _run(fn, mode, *args):
  if mode == "eager":
    return fn(*args)
  return tf.function(fn, jit_compile=mode == "xla")(*args)


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_seeded_draws_equal_tfd_normal(mode, dtype):
  loc = np.array([0.5, -1.0, 2.0], dtype)
  scale = np.array([1.0, 0.1, 3.0], dtype)
  seed = tf.constant([3, 17], tf.int32)
  ours = _run(lambda s: tff.distributions.PhiloxNormal(loc, scale).sample([4, 5], seed=s),
              mode, seed)
  stock = _run(lambda s: tfd.Normal(loc, scale).sample([4, 5], seed=s), mode, seed)
  assert ours.shape == (4, 5, 3) and ours.dtype == dtype
  np.testing.assert_array_equal(ours.numpy(), stock.numpy())


def test_draws_follow_the_normal_law():
  draws = tff.distributions.PhiloxNormal(2.0, 3.0).sample(200_000, seed=[1, 2]).numpy()
  # Mean and standard deviation within 5 standard errors.
  assert abs(draws.mean() - 2.0) < 5 * 3.0 / np.sqrt(draws.size)
  assert abs(draws.std() - 3.0) < 5 * 3.0 / np.sqrt(2 * draws.size)


def test_unseeded_draws_keep_tfp_stateful_semantics():
  dist = tff.distributions.PhiloxNormal(np.float32(0), np.float32(1))
  first, second = dist.sample(1000).numpy(), dist.sample(1000).numpy()
  assert first.shape == (1000,) and not np.array_equal(first, second)
  assert np.all(np.isfinite(dist.sample(10, seed=5).numpy()))


def test_everything_but_sampling_is_tfd_normal():
  ours = tff.distributions.PhiloxNormal([0.0, 1.0], [1.0, 2.0])
  stock = tfd.Normal([0.0, 1.0], [1.0, 2.0])
  x = tf.constant([[0.3, -2.0], [1.5, 4.0]])
  np.testing.assert_array_equal(ours.log_prob(x).numpy(), stock.log_prob(x).numpy())
  np.testing.assert_array_equal(ours.entropy().numpy(), stock.entropy().numpy())
  # Slicing and copies keep the class (TFP rebuilds them with type(self)).
  assert isinstance(ours[1], tff.distributions.PhiloxNormal)
  assert isinstance(ours.copy(scale=[3.0, 3.0]), tff.distributions.PhiloxNormal)
  # A CompositeTensor: it crosses a tf.function boundary as an argument.
  passed = tf.function(lambda d: d.sample(2, seed=[4, 4]))(ours)
  np.testing.assert_array_equal(passed.numpy(), stock.sample(2, seed=[4, 4]).numpy())


def _spline_flow():
  keras.utils.set_random_seed(0)
  model = tff.models.NeuralSplineFlow(2, num_layers=2, num_bins=4, hidden_units=(8,))
  model(tf.zeros([1, 2]))
  return model


def test_flow_sample_graphs_hold_no_auto_select_key_op():
  model = _spline_flow()
  seed = tf.constant([1, 2], tf.int32)
  for fn in (lambda s: model.sample(7, seed=s),
             lambda s: model.distribution.sample(7, seed=s)):
    types = graph_ops.op_types(fn, seed)
    assert "StatelessRandomNormalV2" in types  # it sees the draw
    assert graph_ops.AUTO_SELECT_OP not in types


@pytest.mark.parametrize("mode", ["eager", "xla"])
def test_flow_samples_equal_the_stock_base_flow(mode):
  model = _spline_flow()
  stock = tfd.TransformedDistribution(tfd.Sample(tfd.Normal(0.0, 1.0), [2]), model.bijector)
  seed = tf.constant([5, 6], tf.int32)
  ours = _run(lambda s: model.sample(50, seed=s), mode, seed)
  reference = _run(lambda s: stock.sample(50, seed=s), mode, seed)
  np.testing.assert_array_equal(ours.numpy(), reference.numpy())


if __name__ == "__main__":
  # `main` of this file's py_test: under `bazel test` run the tests, not just the import.
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
