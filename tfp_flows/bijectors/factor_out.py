"""Multi-scale factor-out: a bijector that transforms only the leading channels."""

import tensorflow as tf
import tensorflow_probability as tfp

from tfp_flows.bijectors import _tfp_glue

__all__ = ["FactorOut"]

tfb = tfp.bijectors


class FactorOut(_tfp_glue.OnePassLogDet, tfb.Bijector):
  """Applies `inner` to the first `num_kept` channels; the other channels leave the flow.

  Real NVP's and Glow's multi-scale architecture as one bijector on the full `[H, W, C]`
  tensor, so a whole multi-scale flow is a single `tfd.TransformedDistribution` over the
  image. Going data -> base (inverse), `x = [x_a, x_b]` with `x_a = x[..., :k]`:

  ```none
  inverse:  z = [reshape(inner^{-1}(x_a), shape(x_a)), x_b]
  forward:  x = [inner(reshape(z_a, inner latent shape)), z_b]
  log-det:  log|det inner'(z_a)|   (the factored channels pass unchanged)
  ```

  The factored-out channels `x_b` get their learned conditional Gaussian (Glow's split
  prior N(mu(x_a), sigma(x_a))) from a `Coupling` placed just before this bijector on the
  data side, whose transformer is affine and whose conditioner reads `x_a`. The reshape
  is a fixed permutation of entries, so the base stays a standard normal of shape
  `[H, W, C]`. Cost: that of `inner` on half the channels.

  References: Dinh et al., Real NVP, https://arxiv.org/abs/1605.08803 (Sec. 3.6);
  Kingma & Dhariwal, Glow, https://arxiv.org/abs/1807.03039.
  """

  def __init__(self, inner, num_kept, event_shape, validate_args=False,
               name="factor_out"):
    """Args:
      inner: a bijector on `[H, W, num_kept]` events (e.g. a `tfb.Chain` of the next
        scale's steps); it may change the event shape but not the number of entries.
      num_kept: channels passed to `inner`; the rest are factored out.
      event_shape: the `[H, W, C]` event shape this bijector acts on.
      validate_args: passed to TFP.
      name: name scope.

    Raises:
      ValueError: for `num_kept` outside [1, C - 1] or an `inner` that changes size.
    """
    parameters = dict(locals())
    event_shape = [int(d) for d in event_shape]
    channels = event_shape[-1]
    if not 0 < num_kept < channels:
      raise ValueError(f"num_kept must be in [1, {channels - 1}]; got {num_kept}.")
    self._inner = inner
    self._num_kept = int(num_kept)
    self._kept_shape = event_shape[:-1] + [self._num_kept]
    self._latent_shape = inner.inverse_event_shape(self._kept_shape).as_list()
    count = lambda shape: int(tf.TensorShape(shape).num_elements())
    if count(self._latent_shape) != count(self._kept_shape):
      raise ValueError(
          "inner must preserve the number of entries; it maps "
          f"{list(self._kept_shape)} to {list(self._latent_shape)}.")
    with tf.name_scope(name) as name:
      # Affine exactly when `inner` is (the factored-out half passes unchanged).
      super().__init__(forward_min_event_ndims=len(event_shape),
                       dtype=inner.dtype, is_constant_jacobian=inner.is_constant_jacobian,
                       validate_args=validate_args,
                       parameters=parameters, name=name)

  @property
  def inner(self):
    return self._inner

  @classmethod
  def _parameter_properties(cls, dtype):
    # The batch shape is the inner bijector's on events of the same rank (`[]` for
    # every bijector in this package).
    return {"inner": tfp.util.BatchedComponentProperties(
        event_ndims=lambda self, x_event_ndims: x_event_ndims)}

  @property
  def is_conditional(self):
    return _tfp_glue.is_conditional(self._inner)

  def _reshape_event(self, x, shape):
    return tf.reshape(x, tf.concat([tf.shape(x)[:-len(self._kept_shape)], shape], 0))

  # The inner log-det is computed with the same sliced tensor as the inner transform (so
  # the inner bijectors' caches hit) and left in this bijector's cache.
  def _forward_and_log_det(self, z, conditional_input):
    kwargs = _tfp_glue.conditional_kwargs(self._inner, conditional_input)
    z_a = self._reshape_event(z[..., :self._num_kept], self._latent_shape)
    x_a = self._inner.forward(z_a, **kwargs)
    fldj = self._inner.forward_log_det_jacobian(
        z_a, event_ndims=len(self._latent_shape), **kwargs)
    x_a = self._reshape_event(x_a, self._kept_shape)
    return tf.concat([x_a, z[..., self._num_kept:]], axis=-1), fldj

  def _inverse_and_log_det(self, x, conditional_input):
    kwargs = _tfp_glue.conditional_kwargs(self._inner, conditional_input)
    x_a = x[..., :self._num_kept]
    z_a = self._inner.inverse(x_a, **kwargs)
    ildj = self._inner.inverse_log_det_jacobian(
        x_a, event_ndims=len(self._kept_shape), **kwargs)
    z_a = self._reshape_event(z_a, self._kept_shape)
    return tf.concat([z_a, x[..., self._num_kept:]], axis=-1), ildj
