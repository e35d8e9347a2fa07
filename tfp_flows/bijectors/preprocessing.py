"""Preprocessing bijectors for image data: the logit squashing of bounded pixels."""

import math

import tensorflow as tf
import tensorflow_probability as tfp

__all__ = ["Logit"]

tfb = tfp.bijectors


class Logit(tfb.AutoCompositeTensorBijector):
  """Maps unbounded latents to pixels in (0, 1); its inverse is Real NVP's logit transform.

  ```none
  inverse (data -> base):  z = logit(alpha + (1 - 2 alpha) x),    x in (0, 1)
  forward (base -> data):  x = (sigmoid(z) - alpha) / (1 - 2 alpha)
  log-det:  log|dz/dx| = log(1 - 2 alpha) - log(p) - log(1 - p),   p = alpha + (1-2 alpha) x
  ```

  `alpha` keeps the logit away from 0 and 1 (Real NVP uses 0.05). Elementwise, O(size).
  With `validate_args=True` the inverse rejects inputs outside [0, 1].

  Reference: Dinh et al., Real NVP, https://arxiv.org/abs/1605.08803 (Sec. 4.1).
  """

  def __init__(self, alpha=0.05, validate_args=False, name="logit"):
    """Args:
      alpha: float in [0, 0.5), the margin kept from 0 and 1.
      validate_args: if True, the inverse checks that inputs are in [0, 1].
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

  def _inverse(self, x):
    if self.validate_args:
      x = tf.debugging.assert_greater_equal(x, tf.zeros([], x.dtype),
                                            "Logit: inputs must be in [0, 1].")
      x = tf.debugging.assert_less_equal(x, tf.ones([], x.dtype),
                                         "Logit: inputs must be in [0, 1].")
    p = self._alpha + (1.0 - 2.0 * self._alpha) * x
    return tf.math.log(p) - tf.math.log1p(-p)

  def _inverse_log_det_jacobian(self, x):
    p = self._alpha + (1.0 - 2.0 * self._alpha) * x
    return math.log(1.0 - 2.0 * self._alpha) - tf.math.log(p) - tf.math.log1p(-p)

  def _forward_log_det_jacobian(self, z):
    # log|dx/dz| = log sigmoid(z) + log sigmoid(-z) - log(1 - 2 alpha), stable for any z.
    return (tf.math.log_sigmoid(z) + tf.math.log_sigmoid(-z)
            - math.log(1.0 - 2.0 * self._alpha))
