"""tfp_flows.bijectors._tfp_glue.stable_name: the bijector name TFP keeps as given.

TFP passes a bijector's name through `tf.name_scope`, so a second bijector of the same
name built inside one graph is renamed ("shift_1"), and a `tfb.Chain` routing keyword
arguments by name no longer finds it; a name ending in "/" is kept. The checks build
stock TFP bijectors twice inside one `tf.function` (and under XLA), and a flow layer's
bijector twice, and compare their names.
"""

import sys

import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_flows as tff
from tfp_flows.bijectors import _tfp_glue

tfb = tfp.bijectors


def test_stable_name_ends_in_one_slash():
  assert _tfp_glue.stable_name("coupling") == "coupling/"
  assert _tfp_glue.stable_name("coupling/") == "coupling/"
  assert _tfp_glue.stable_name("glow_step_scale") == "glow_step_scale/"


@pytest.mark.parametrize("jit_compile", [False, True])
def test_tfp_keeps_the_stable_name_on_every_build_in_a_graph(jit_compile):
  names = {}

  @tf.function(jit_compile=jit_compile)
  def build_twice(x):
    plain = [tfb.Shift(x, name="shift") for _ in range(2)]
    stable = [tfb.Shift(x, name=_tfp_glue.stable_name("shift")) for _ in range(2)]
    names["plain"] = [b.name for b in plain]
    names["stable"] = [b.name for b in stable]
    return stable[1].forward(x)

  assert float(build_twice(tf.constant(1.5))) == 3.0
  assert names["plain"] == ["shift", "shift_1"]  # why the glue exists
  assert names["stable"] == ["shift", "shift"]


def test_a_layers_bijector_keeps_its_name_when_rebuilt_in_a_graph():
  layer = tff.layers.ActNorm(name="norm")
  tff.FlowModel([layer], [2])
  assert layer.bijector_name() == "norm/" and layer.bijector_name("_x") == "norm_x/"
  names = []

  @tf.function
  def rebuild():
    names.extend(layer.bijector.name for _ in range(2))
    return tf.constant(0)

  rebuild()
  assert names == ["norm", "norm"]


if __name__ == "__main__":
  # `main` of this file's py_test: under `bazel test` run the tests, not just the import.
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
