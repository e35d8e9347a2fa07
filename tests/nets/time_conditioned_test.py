"""Time-conditioned nets: forward-mode Jacobian products against autodiff Jacobians."""

import numpy as np
import pytest
import tensorflow as tf

from tfp_flows import nets


def _randomised(net, input_shape, seed):
  net.build((None,) + tuple(input_shape))
  rng = np.random.default_rng(seed)
  for weight in net.weights:
    weight.assign(rng.normal(size=weight.shape))
  return net


def _jacobian_products(net, z, t, tangents):
  """`J v` per tangent from the batch Jacobian of reverse-mode autodiff."""
  with tf.GradientTape() as tape:
    tape.watch(z)
    out = net(z, t)
  jacobian = tape.batch_jacobian(out, z)
  batch, size = z.shape[0], int(np.prod(z.shape[1:]))
  jacobian = tf.reshape(jacobian, [batch, size, size])
  flat = tf.reshape(tangents, [tangents.shape[0], batch, size])
  return out, tf.reshape(tf.einsum("bij,kbj->kbi", jacobian, flat), tangents.shape)


def _assert_mlp_products_equal_autodiff(net, call_with_tangents, seed, value_atol):
  """`call_with_tangents` of a [4]-input MLP against autodiff on 5 rows and 3 tangents."""
  rng = np.random.default_rng(seed)
  z = tf.constant(rng.normal(size=[5, 4]))
  t = tf.constant(rng.uniform(size=[5]))
  tangents = tf.constant(rng.normal(size=[3, 5, 4]))
  value, products = call_with_tangents(z, t, tangents)
  expected_value, expected = _jacobian_products(net, z, t, tangents)
  np.testing.assert_allclose(value.numpy(), expected_value.numpy(), atol=value_atol)
  scale = np.abs(expected.numpy()).max()
  assert scale > 1e-2
  np.testing.assert_allclose(products.numpy(), expected.numpy(), atol=1e-12 * scale)


@pytest.mark.parametrize("activation", ["softplus", "tanh", "sigmoid", "swish", "linear"])
def test_mlp_products_equal_autodiff(activation):
  net = _randomised(nets.TimeConditionedMLP((8, 8), activation, dtype="float64"), [4], 0)
  _assert_mlp_products_equal_autodiff(net, net.call_with_tangents, seed=1, value_atol=1e-14)


def test_conv_products_equal_autodiff_under_xla():
  net = _randomised(nets.TimeConditionedConvNet((4, 4), "softplus", dtype="float64"),
                    [3, 3, 2], 2)
  rng = np.random.default_rng(3)
  z = tf.constant(rng.normal(size=[2, 3, 3, 2]))
  t = tf.constant(0.4, tf.float64)
  tangents = tf.constant(rng.normal(size=[2, 2, 3, 3, 2]))
  _, expected = _jacobian_products(net, z, t, tangents)
  value, products = tf.function(net.call_with_tangents, jit_compile=True)(z, t, tangents)
  np.testing.assert_allclose(value.numpy(), net(z, t).numpy(), atol=1e-13)
  np.testing.assert_allclose(products.numpy(), expected.numpy(), atol=1e-12)


def test_activation_without_closed_form_derivative_is_refused_clearly():
  net = _randomised(nets.TimeConditionedMLP((4,), "gelu"), [2], 4)
  assert not net.supports_tangents
  assert nets.TimeConditionedMLP((4,), "tanh").supports_tangents
  with pytest.raises(ValueError, match="gelu"):
    net.call_with_tangents(tf.zeros([1, 2]), 0.0, tf.zeros([1, 1, 2]))


@pytest.mark.parametrize("activation", ["softplus", "tanh"])
def test_concat_mlp_products_equal_autodiff(activation):
  net = _randomised(nets.TimeConditionedMLP((8, 8), activation, time_conditioning="concat",
                                            dtype="float64"), [4], 5)
  _assert_mlp_products_equal_autodiff(
      net, tf.function(net.call_with_tangents, jit_compile=True), seed=6, value_atol=1e-13)


def test_concat_mlp_is_an_mlp_on_z_and_t():
  """"concat": the plain MLP of TFP's FFJORD examples, `W_k(...tanh(W_1 [z, t] + b_1))`."""
  net = _randomised(nets.TimeConditionedMLP((64, 64, 64), "tanh", time_conditioning="concat",
                                            dtype="float64"), [2], 7)
  # The stock tf_keras net of the FFJORD examples: Dense(64)x3 on [z, t], then Dense(2).
  assert sum(int(np.prod(w.shape)) for w in net.weights) == 8706
  rng = np.random.default_rng(8)
  z, t = rng.normal(size=[6, 2]), rng.uniform(size=[6])
  h = np.concatenate([z, t[:, None]], axis=1)
  kernels = [w.numpy() for w in net.weights if w.name == "kernel"]
  biases = [w.numpy() for w in net.weights if w.name == "bias"]
  assert [k.shape for k in kernels] == [(3, 64), (64, 64), (64, 64), (64, 2)]
  for kernel, bias in zip(kernels[:-1], biases[:-1]):
    h = np.tanh(h @ kernel + bias)
  expected = h @ kernels[-1] + biases[-1]
  np.testing.assert_allclose(net(tf.constant(z), tf.constant(t)).numpy(), expected,
                             atol=1e-12)


def test_concat_conv_net_takes_time_as_a_channel_under_xla():
  net = _randomised(nets.TimeConditionedConvNet((4,), "softplus", time_conditioning="concat",
                                                dtype="float64"), [3, 3, 2], 9)
  rng = np.random.default_rng(10)
  z = tf.constant(rng.normal(size=[2, 3, 3, 2]))
  t = tf.constant(0.7, tf.float64)
  hidden, output = net.weights[:2], net.weights[2:]
  with_time = tf.concat([z, tf.fill([2, 3, 3, 1], tf.constant(0.7, tf.float64))], -1)
  h = tf.nn.softplus(tf.nn.conv2d(with_time, hidden[0], 1, "SAME") + hidden[1])
  expected = tf.nn.conv2d(h, output[0], 1, "SAME") + output[1]
  tangents = tf.constant(rng.normal(size=[2, 2, 3, 3, 2]))
  value, products = tf.function(net.call_with_tangents, jit_compile=True)(z, t, tangents)
  np.testing.assert_allclose(value.numpy(), expected.numpy(), atol=1e-13)
  _, expected_products = _jacobian_products(net, z, t, tangents)
  np.testing.assert_allclose(products.numpy(), expected_products.numpy(), atol=1e-12)


def test_unknown_time_conditioning_is_refused_clearly():
  with pytest.raises(ValueError, match="time_conditioning must be one of"):
    nets.TimeConditionedMLP((4,), time_conditioning="squash")
