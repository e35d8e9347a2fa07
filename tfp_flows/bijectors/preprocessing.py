"""Preprocessing bijectors for image data: the logit squashing of bounded pixels."""

import math

import tensorflow as tf
import tensorflow_probability as tfp

__all__ = ["Logit"]

tfb = tfp.bijectors


class Logit(tfb.AutoCompositeTensorBijector):
  """Maps unbounded latents to pixels; its inverse is Real NVP's logit transform.

  ```none
  inverse (data -> base):  z = logit(alpha + (1 - 2 alpha) x),    x in (0, 1)
  forward (base -> data):  x = (sigmoid(z) - alpha) / (1 - 2 alpha)
  log-det:  log|dz/dx| = log(1 - 2 alpha) - log(p) - log(1 - p),   p = alpha + (1-2 alpha) x
  ```

  `alpha` keeps the logit away from 0 and 1 (Real NVP uses 0.05). Elementwise, O(size).
  The forward's range, and so the inverse's domain, is the open interval
  (-alpha / (1 - 2 alpha), (1 - alpha) / (1 - 2 alpha)), which contains [0, 1]; with
  `validate_args=True` the inverse rejects inputs outside it.

  Reference: Dinh et al., Real NVP, https://arxiv.org/abs/1605.08803 (Sec. 4.1).
  """

  def __init__(self, alpha=0.05, validate_args=False, name="logit"):
    """Args:
      alpha: float in [0, 0.5), the margin kept from 0 and 1.
      validate_args: if True, the inverse checks that inputs are in its domain.
      name: name scope.
    """
    parameters = dict(locals())
    if not 0.0 <= alpha < 0.5:
      raise ValueError(f"alpha must be in [0, 0.5); got {alpha!r}.")
    self._alpha = float(alpha)
    with tf.name_scope(name) as name:
      super().__init__(forward_min_event_ndims=0, validate_args=validate_args,
                       parameters=parameters, name=name)

  @property
  def alpha(self):
    return self._alpha

  @classmethod
  def _parameter_properties(cls, dtype):
    return {}

  @classmethod
  def _is_increasing(cls):
    return True

  def _forward(self, z):
    return (tf.sigmoid(z) - self._alpha) / (1.0 - 2.0 * self._alpha)

  def _margin_probability(self, x):
    """p = alpha + (1 - 2 alpha) x, checked to lie in (0, 1) when validating."""
    p = self._alpha + (1.0 - 2.0 * self._alpha) * x
    if not self.validate_args:
      return p
    low = -self._alpha / (1.0 - 2.0 * self._alpha)
    message = (f"Logit: inverse inputs must lie in ({low:.4g}, {1.0 - low:.4g}), "
               "e.g. pixels scaled to [0, 1].")
    inside = tf.reduce_all((p > 0.0) & (p < 1.0))
    with tf.control_dependencies([tf.debugging.Assert(inside, [message])]):
      return tf.identity(p)

  def _inverse(self, x):
    p = self._margin_probability(x)
    return tf.math.log(p) - tf.math.log1p(-p)

  def _inverse_log_det_jacobian(self, x):
    p = self._margin_probability(x)
    return math.log(1.0 - 2.0 * self._alpha) - tf.math.log(p) - tf.math.log1p(-p)

  def _forward_log_det_jacobian(self, z):
    # log|dx/dz| = log sigmoid(z) + log sigmoid(-z) - log(1 - 2 alpha), stable for any z.
    return (tf.math.log_sigmoid(z) + tf.math.log_sigmoid(-z)
            - math.log(1.0 - 2.0 * self._alpha))
