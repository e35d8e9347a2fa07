"""Training-time random draws name their RNG algorithm, and keep their values.

A stateless random op left at TF's default algorithm ("auto_select") derives its key
and counter with a `StatelessRandomGetKeyCounter` op, which in an XLA-compiled step cost
~0.5 ms per op on the CI machine, against ~0.1 ms for the whole draw with the algorithm
named (benchmarks/seed_draw_cost.py). So the layers' traced
training graphs must hold no such op. Naming "philox" gives the same numbers as
"auto_select" on CPU and GPU, so seeded runs keep their values: the seed drawn from a
layer's SeedGenerator equals `keras.random.randint`'s, eager and under XLA.
"""

import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfp_flows as tff
from tfp_flows.layers import _replica_seed
from tests.testing import graph_ops


def _dequantize():
  layer = tff.layers.Dequantize(num_bits=5, alpha=None, seed=1)
  x = tf.constant(np.arange(8, dtype="float32").reshape(2, 4))
  layer(x)
  return lambda: layer(x, training=True)


def _noise_augmentation():
  layer = tff.layers.NoiseAugmentation(noise_std=0.1, seed=2)
  x = tf.zeros([2, 4, 4, 1])
  layer(x)
  return lambda: layer(x, training=True)


def _label_dropout():
  layer = tff.layers.TarFlowBlock(patch_size=2, channels=8, num_layers=1, heads=2,
                                  num_classes=3, label_dropout=0.5, seed=3)
  x, labels = tf.zeros([2, 4, 4, 1]), tf.constant([0, 2])
  layer(x, context=labels)
  return lambda: layer(x, context=labels, training=True)


def _flow_matching():
  layer = tff.layers.FFJORD(hidden_units=(8,), seed=4)
  x = tf.ones([3, 2])
  layer(x)
  return lambda: layer.flow_matching_loss(x)


@pytest.mark.parametrize("make", [_dequantize, _noise_augmentation, _label_dropout,
                                  _flow_matching], ids=lambda f: f.__name__[1:])
def test_training_draws_name_their_algorithm(make):
  types = graph_ops.op_types(make())
  assert types & {"StatelessRandomUniformV2", "StatelessRandomNormalV2"}  # it sees them
  assert graph_ops.AUTO_SELECT_OP not in types


@pytest.mark.parametrize("jit_compile", [False, True])
def test_layer_seed_equals_keras_randint(jit_compile):
  reference_generator = keras.random.SeedGenerator(11)
  generator = keras.random.SeedGenerator(11)
  reference = tf.function(
      lambda: keras.random.randint([2], 0, 2**31 - 1, seed=reference_generator,
                                   dtype="int32"), jit_compile=jit_compile)
  draw = tf.function(lambda: _replica_seed.draw_replica_seed(generator),
                     jit_compile=jit_compile)
  for _ in range(3):
    np.testing.assert_array_equal(draw().numpy(), reference().numpy())
  assert graph_ops.AUTO_SELECT_OP not in graph_ops.op_types(lambda: _replica_seed.draw_replica_seed(generator))


if __name__ == "__main__":
  # `main` of this file's py_test: under `bazel test` run the tests, not just the import.
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
