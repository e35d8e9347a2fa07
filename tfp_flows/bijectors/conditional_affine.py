"""An elementwise affine map whose shift and scale are computed from a context."""

import tensorflow as tf

from tfp_flows.bijectors import network_bijector

__all__ = ["ConditionalAffine"]


class ConditionalAffine(network_bijector.NetworkBijector):
  """y = x * exp(log_scale) + shift with `(shift, log_scale) = fn(conditional_input)`.

  The learned (optionally class-conditional) Gaussian prior of Glow: with a standard
  normal base, `ConditionalAffine` makes the latent N(shift(c), exp(log_scale(c))^2).

  ```none
  forward:  y = x * exp(s) + t
  inverse:  x = (y - t) * exp(-s)
  log-det:  sum over the event of s  (s, t broadcast against x)
  ```

  `fn` is called as `fn()` without a context and `fn(conditional_input)` with one; it
  returns `(shift, log_scale)` tensors broadcastable to x, e.g. `[C]` or `[N, 1, 1, C]`
  for images `[N, H, W, C]`. O(size of x) either way.

  Reference: Kingma & Dhariwal, Glow, https://arxiv.org/abs/1807.03039 (learned prior,
  class-conditional prior).
  """

  def __init__(self, shift_and_log_scale_fn, event_ndims=1, conditional=False,
               validate_args=False, dtype=tf.float32, name="conditional_affine"):
    """Args:
      shift_and_log_scale_fn: callable `() -> (t, s)` or `(c) -> (t, s)`.
      event_ndims: rank of one event (1 for vectors, 3 for images).
      conditional: whether `fn` takes the context; if False it is called as `fn()`
        and passing `conditional_input` is an error.
      validate_args: if True, check that `t` and `s` are finite.
      dtype: float dtype.
      name: name scope.
    """
    parameters = dict(locals())
    if not callable(shift_and_log_scale_fn):
      raise ValueError("shift_and_log_scale_fn must be callable; got "
                       f"{shift_and_log_scale_fn!r}.")
    self._fn = shift_and_log_scale_fn
    with tf.name_scope(name) as name:
      # Affine in x (shift and scale depend on the context only): the Jacobian does
      # not depend on x, so TFP caches the log-det and TransformedDistribution.mean()
      # and entropy() are forward(base mean) and base entropy + log-det.
      super().__init__(conditional=conditional,
                       forward_min_event_ndims=int(event_ndims), dtype=tf.as_dtype(dtype),
                       is_constant_jacobian=True, validate_args=validate_args,
                       parameters=parameters, name=name)

  def _shift_and_log_scale(self, conditional_input):
    self._check_conditional_input(conditional_input)
    shift, log_scale = (self._fn() if conditional_input is None
                        else self._fn(conditional_input))
    shift = tf.convert_to_tensor(shift, self.dtype)
    log_scale = tf.convert_to_tensor(log_scale, self.dtype)
    if self.validate_args:
      shift = tf.debugging.assert_all_finite(shift, "ConditionalAffine: shift not finite.")
      log_scale = tf.debugging.assert_all_finite(
          log_scale, "ConditionalAffine: log_scale not finite.")
    return shift, log_scale

  def _log_det(self, x, log_scale):
    axes = list(range(-self.forward_min_event_ndims, 0))
    return tf.reduce_sum(tf.broadcast_to(log_scale, tf.broadcast_dynamic_shape(
        tf.shape(log_scale), tf.shape(x))), axis=axes)

  def _forward(self, x, conditional_input=None):
    shift, log_scale = self._shift_and_log_scale(conditional_input)
    return x * tf.exp(log_scale) + shift

  def _inverse(self, y, conditional_input=None):
    shift, log_scale = self._shift_and_log_scale(conditional_input)
    return (y - shift) * tf.exp(-log_scale)

  def _forward_log_det_jacobian(self, x, conditional_input=None):
    return self._log_det(x, self._shift_and_log_scale(conditional_input)[1])

  def _inverse_log_det_jacobian(self, y, conditional_input=None):
    return -self._log_det(y, self._shift_and_log_scale(conditional_input)[1])
