"""The presets' `dtype=`: float64 without touching floatx, float32 next to a mixed policy.

Before `dtype=` existed a preset took Keras' global policy: a float64 preset needed
`keras.config.set_floatx("float64")` for the whole process, and under a global mixed
precision policy no preset could be built at all (its first flow layer refused the policy
and told the user to pass `dtype='float32'`, which the preset did not take).
"""

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfp_flows as tff
from tests.testing import flow_helpers

models = tff.models

PRESETS = {
    "NeuralSplineFlow": (lambda **kw: models.NeuralSplineFlow(
        event_shape=[3], num_blocks=2, hidden_units=(4,), **kw), [3], None),
    "NeuralSplineFlow_autoregressive": (lambda **kw: models.NeuralSplineFlow(
        event_shape=[3], num_blocks=2, hidden_units=(4,), autoregressive=True,
        linear="permute", **kw), [3], None),
    "Glow": (lambda **kw: models.Glow([4, 4, 1], num_scales=1, steps_per_scale=2,
                                      hidden_channels=4, **kw), [4, 4, 1], 256),
    "ResidualFlow": (lambda **kw: models.ResidualFlow([3], num_blocks=2, hidden_units=(4,),
                                                      **kw), [3], None),
    "FFJORDFlow": (lambda **kw: models.FFJORDFlow([2], hidden_units=(4,), trace="exact",
                                                  solver="rk4", num_steps=4, **kw), [2], None),
    "TarFlow": (lambda **kw: models.TarFlow([4, 4, 1], channels=8, heads=2, num_blocks=2,
                                            layers_per_block=1, **kw), [4, 4, 1], 256),
}


def _data(event_shape, levels, dtype):
  rng = np.random.default_rng(0)
  if levels is None:
    return rng.normal(size=[5, *event_shape]).astype(dtype)
  return rng.integers(0, levels, size=[5, *event_shape]).astype(dtype)


@contextlib.contextmanager
def _global_policy(name):
  """Keras' floatx and global policy set to `name` (floatx: its compute dtype), then restored."""
  floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
  keras.config.set_dtype_policy(name)
  keras.config.set_floatx(keras.config.dtype_policy().compute_dtype)
  try:
    yield
  finally:
    keras.config.set_floatx(floatx)
    keras.config.set_dtype_policy(policy)


def _names_every_layer_dtype(model, dtype):
  assert model.dtype_policy.name == dtype
  assert {w.dtype for w in model.trainable_weights} == {dtype}
  assert {layer.compute_dtype for layer in model.flow_layers} == {dtype}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_dtype_float64_is_the_float64_model_without_setting_floatx(name):
  make, event_shape, levels = PRESETS[name]
  assert keras.config.floatx() == "float32"
  model = make(dtype="float64")
  assert keras.config.floatx() == "float32"
  _names_every_layer_dtype(model, "float64")
  flow_helpers.perturb_weights(model, scale=0.3)
  with _global_policy("float64"):
    reference = make()
  _names_every_layer_dtype(reference, "float64")
  reference.set_weights(model.get_weights())
  x = _data(event_shape, levels, "float64")
  got = model.log_prob(x)
  assert got.dtype == tf.float64
  expected = reference.log_prob(x).numpy()
  assert np.all(np.isfinite(expected))
  np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
  assert model.sample(2, seed=1).dtype == tf.float64


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_dtype_float32_builds_every_preset_under_a_global_mixed_policy(name, global_policy):
  make, event_shape, levels = PRESETS[name]
  preset = name.split("_")[0]
  with pytest.raises(ValueError, match=rf"{preset} does not support the mixed precision "
                                       rf"policy '{global_policy}'.* Pass dtype='float32' "
                                       rf"to {preset}"):
    make()
  model = make(dtype="float32")
  _names_every_layer_dtype(model, "float32")
  flow_helpers.perturb_weights(model, scale=0.3)
  with _global_policy("float32"):
    reference = make()
  reference.set_weights(model.get_weights())
  x = _data(event_shape, levels, "float32")
  np.testing.assert_allclose(model.log_prob(x).numpy(), reference.log_prob(x).numpy(),
                             rtol=1e-6)


def test_a_float32_preset_trains_under_xla_next_to_a_mixed_policy(global_policy):
  model = models.NeuralSplineFlow(event_shape=[3], num_blocks=2, hidden_units=(8,),
                                  dtype="float32")
  model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True)
  x = _data([3], None, "float32").repeat(20, axis=0) * [1.0, 0.5, 2.0]
  before = -float(np.mean(model.log_prob(x)))
  history = model.fit(x, epochs=3, batch_size=25, verbose=0)
  assert all(np.isfinite(history.history["loss"]))
  assert -float(np.mean(model.log_prob(x))) < before - 0.05
  assert keras.layers.Dense(2).compute_dtype == global_policy.split("_")[1]


@pytest.mark.parametrize("dtype,message", [
    ("mixed_float16", r"NeuralSplineFlow does not support the mixed precision policy "
                      r"'mixed_float16'.* Pass dtype='float32' to NeuralSplineFlow"),
    ("float16", r"NeuralSplineFlow computes in float32 or float64; dtype is 'float16'"),
    ("int32", r"NeuralSplineFlow computes in float32 or float64; dtype is 'int32'"),
])
def test_a_dtype_that_is_not_float32_or_float64_is_the_presets_error(dtype, message):
  with pytest.raises(ValueError, match=message):
    models.NeuralSplineFlow(event_shape=[3], hidden_units=(4,), dtype=dtype)
