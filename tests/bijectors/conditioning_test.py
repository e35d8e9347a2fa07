"""Routing conditional_input through tfb.Chain / tfb.Invert (tfp_flows.bijectors.conditioning)."""

import math

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_flows import bijectors as tffb

tfb = tfp.bijectors


def _shift_by_context(name, factor):
  return tffb.ConditionalAffine(lambda c: (factor * c, tf.zeros_like(c)), conditional=True,
                                dtype=tf.float64, name=name)


def test_is_conditional_and_kwargs_mirror_the_composition():
  outer = _shift_by_context("outer", 2.0)
  inner = _shift_by_context("inner", 1.0)
  plain = tffb.ActNorm(np.array([1.0, -1.0]), np.array([math.log(2.0), 0.0]),
                       name="plain")
  inverted = tfb.Invert(tfb.Chain([inner], name="nested"), name="inverted")
  chain = tfb.Chain([outer, plain, inverted])
  c = tf.constant([[1.0, 2.0]], tf.float64)

  assert tffb.is_conditional(chain) and tffb.is_conditional(inverted)
  assert not tffb.is_conditional(plain)
  assert not tffb.is_conditional(tfb.Chain([plain, tfb.Invert(plain)]))
  kwargs = tffb.conditional_kwargs(chain, c)
  # TFP's Chain routes by each member's name; Invert passes its kwargs on unchanged.
  assert kwargs == {"outer": {"conditional_input": c},
                    "inverted": {"inner": {"conditional_input": c}}}
  assert tffb.conditional_kwargs(chain, None) == {}
  assert tffb.conditional_kwargs(plain, c) == {}

  # forward(x) = outer(plain(inner^{-1}(x))) = 2 c + (x - c) * [2, 1] + [1, -1].
  x = np.array([[0.5, -1.0]])
  expected = 2 * c.numpy() + (x - c.numpy()) * [2.0, 1.0] + [1.0, -1.0]
  np.testing.assert_allclose(chain.forward(x, **kwargs).numpy(), expected, rtol=1e-15)
  np.testing.assert_allclose(chain.inverse(tf.constant(expected), **kwargs).numpy(), x,
                             rtol=1e-15)
  np.testing.assert_allclose(
      chain.forward_log_det_jacobian(x, event_ndims=1, **kwargs).numpy(), [math.log(2.0)],
      rtol=1e-15)
