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


@pytest.mark.parametrize("activation", ["softplus", "tanh", "sigmoid", "swish", "linear"])
def test_mlp_products_equal_autodiff(activation):
  net = _randomised(nets.TimeConditionedMLP((8, 8), activation, dtype="float64"), [4], 0)
  rng = np.random.default_rng(1)
  z = tf.constant(rng.normal(size=[5, 4]))
  t = tf.constant(rng.uniform(size=[5]))
  tangents = tf.constant(rng.normal(size=[3, 5, 4]))
  value, products = net.call_with_tangents(z, t, tangents)
  expected_value, expected = _jacobian_products(net, z, t, tangents)
  np.testing.assert_allclose(value.numpy(), expected_value.numpy(), atol=1e-14)
  scale = np.abs(expected.numpy()).max()
  assert scale > 1e-2
  np.testing.assert_allclose(products.numpy(), expected.numpy(), atol=1e-12 * scale)


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
