"""`tfp_flows.nets.MLP`: the stacked `[kernel; bias]` layout against NumPy and the Dense layout."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfp_flows as tff

nets = tff.nets


def _numpy_mlp(x, layers, activation):
  """The network in NumPy: `layers` is a list of (kernel, bias); no activation at the end."""
  h = x
  for i, (kernel, bias) in enumerate(layers):
    h = h @ kernel + bias
    if i < len(layers) - 1:
      h = activation(h)
  return h


def _random_layers(widths, rng):
  return [(rng.normal(size=(a, b)), rng.normal(size=b)) for a, b in zip(widths, widths[1:])]


@pytest.mark.parametrize("hidden_units", [(5, 7), ()], ids=["two_hidden", "affine"])
@pytest.mark.parametrize("with_context", [False, True], ids=["plain", "context"])
def test_stacked_layout_computes_the_dense_network_of_its_rows(hidden_units, with_context):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(6, 3))
  context = rng.normal(size=(6, 2)) if with_context else None
  width = 3 + (2 if with_context else 0)
  layers = _random_layers([width, *hidden_units, 4], rng)
  net = nets.MLP(4, hidden_units, activation="tanh", dtype="float64")
  net.build((None, 3), None if context is None else (None, 2))
  assert len(net.trainable_weights) == len(layers)
  net.set_weights([np.concatenate([k, b[None]], 0) for k, b in layers])
  inputs = x if context is None else np.concatenate([x, context], -1)
  expected = _numpy_mlp(inputs, layers, np.tanh)
  np.testing.assert_allclose(net(x, context).numpy(), expected, rtol=1e-12, atol=1e-12)
  compiled = tf.function(lambda a, c: net(a, c), jit_compile=True)
  np.testing.assert_allclose(compiled(x, context).numpy(), expected, rtol=1e-12, atol=1e-12)

  dense = nets.MLP(4, hidden_units, activation="tanh", layout="dense", dtype="float64")
  dense.build((None, 3), None if context is None else (None, 2))
  assert len(dense.trainable_weights) == 2 * len(layers)
  dense.set_weights([w for k, b in layers for w in (k, b)])
  np.testing.assert_allclose(dense(x, context).numpy(), expected, rtol=1e-12, atol=1e-12)


def test_stacked_layout_takes_leading_batch_dimensions():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 3, 4))
  layers = _random_layers([4, 6, 5], rng)
  net = nets.MLP(5, (6,), dtype="float64")
  net.build((None, 4))
  net.set_weights([np.concatenate([k, b[None]], 0) for k, b in layers])
  expected = _numpy_mlp(x, layers, lambda h: np.maximum(h, 0))
  np.testing.assert_allclose(net(x).numpy(), expected, rtol=1e-12, atol=1e-12)


def test_stacked_layout_starts_with_glorot_kernels_zero_biases_and_a_zero_output():
  keras.utils.set_random_seed(0)
  net = nets.MLP(3, (200, 300))
  net.build((None, 100))
  first, second, output = (w.numpy() for w in net.trainable_weights)
  assert first.shape == (101, 200) and second.shape == (201, 300) and output.shape == (301, 3)
  for weight, fan_in, fan_out in ((first, 100, 200), (second, 200, 300)):
    np.testing.assert_array_equal(weight[-1], 0.0)
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    kernel = weight[:-1]
    assert np.max(np.abs(kernel)) <= limit
    # Uniform on [-limit, limit]: standard deviation limit / sqrt(3), to 3% over 20k draws.
    np.testing.assert_allclose(kernel.std(), limit / np.sqrt(3.0), rtol=0.03)
  np.testing.assert_array_equal(output, 0.0)
  np.testing.assert_array_equal(net(np.ones((2, 100), np.float32)).numpy(), 0.0)


def test_the_gradient_of_a_stacked_layer_matches_the_dense_layers():
  rng = np.random.default_rng(2)
  x = tf.constant(rng.normal(size=(8, 3)))
  layers = _random_layers([3, 4, 2], rng)
  stacked = nets.MLP(2, (4,), dtype="float64")
  stacked.build((None, 3))
  stacked.set_weights([np.concatenate([k, b[None]], 0) for k, b in layers])
  dense = nets.MLP(2, (4,), layout="dense", dtype="float64")
  dense.build((None, 3))
  dense.set_weights([w for k, b in layers for w in (k, b)])

  def gradients(net):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(tf.sin(net(x)))
    return [g.numpy() for g in tape.gradient(loss, net.trainable_weights)]

  dense_grads = gradients(dense)
  expected = [np.concatenate([k, b[None]], 0)
              for k, b in zip(dense_grads[::2], dense_grads[1::2])]
  for got, want in zip(gradients(stacked), expected):
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_config_round_trip_and_configs_without_a_layout_load_as_dense():
  net = nets.MLP(3, (4,), activation="tanh")
  config = net.get_config()
  assert config["layout"] == "stacked"
  assert nets.MLP.from_config(config).layout == "stacked"
  del config["layout"]  # what files written before the stacked layout hold
  assert nets.MLP.from_config(config).layout == "dense"
  coupling_config = tff.layers.AffineCoupling(hidden_units=(4,)).get_config()
  assert coupling_config["conditioner_layout"] == "stacked"
  del coupling_config["conditioner_layout"]
  old = tff.layers.AffineCoupling.from_config(coupling_config)
  assert old.conditioner_layout == "dense"
  old.build((None, 4))
  assert old.net.layout == "dense"


def test_unknown_layouts_are_errors():
  with pytest.raises(ValueError, match="layout must be one of"):
    nets.MLP(3, layout="fused")
  with pytest.raises(ValueError, match="conditioner_layout must be"):
    tff.layers.AffineCoupling(conditioner_layout="fused")


@pytest.mark.parametrize("layout", ["stacked", "dense"])
def test_integer_and_float64_inputs_are_computed_in_the_layers_dtype(layout):
  rng = np.random.default_rng(3)
  net = nets.MLP(2, (5,), layout=layout, autocast=False)
  net.build((None, 3))
  for weight in net.trainable_weights:
    weight.assign(rng.normal(size=weight.shape).astype("float32"))
  x = rng.integers(-3, 4, size=(4, 3))
  expected = net(x.astype("float32")).numpy()
  for given in (x.astype("int32"), x.astype("float64")):
    got = net(given)
    assert got.dtype == "float32"
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("layout", ["stacked", "dense"])
def test_a_float_context_next_to_integer_inputs_is_not_truncated(layout):
  rng = np.random.default_rng(4)
  net = nets.MLP(2, (5,), layout=layout, autocast=False)
  net.build((None, 3), (None, 2))
  for weight in net.trainable_weights:
    weight.assign(rng.normal(size=weight.shape).astype("float32"))
  x = rng.integers(-3, 4, size=(4, 3))
  context = rng.normal(size=(4, 2)).astype("float32")
  expected = net(x.astype("float32"), context).numpy()
  np.testing.assert_allclose(net(x.astype("int32"), context).numpy(), expected, rtol=1e-6)
