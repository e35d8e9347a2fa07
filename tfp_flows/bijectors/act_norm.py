"""Activation normalisation: a learned per-channel affine transform."""

import tensorflow as tf
import tensorflow_probability as tfp

from tensorflow_probability.python.internal import tensor_util

from tfp_flows.bijectors import variable_tracking
from tfp_flows.numerics import checks as _checks

__all__ = ["ActNorm"]

tfb = tfp.bijectors


class ActNorm(tfb.AutoCompositeTensorBijector):
  """Per-channel affine transform of the last axis (Glow's ActNorm).

  #### Mathematical Details

  With `C` channels on the last axis, parameters `loc` and `log_scale` of shape `[C]`
  (or `[..., C]` for a batch of bijectors):

  ```none
  forward:   y = x * exp(log_scale) + loc
  inverse:   x = (y - loc) * exp(-log_scale)
  log-det:   log|det dy/dx| = sum_c log_scale[c]        (per event of one vector)
  ```

  `forward_min_event_ndims` is 1; over an image event `[H, W, C]` TFP multiplies the
  log-det by `H * W`. Both directions cost O(size of x).

  The Keras layer `tfp_flows.layers.ActNorm` owns `loc` and `log_scale` and initialises
  them from the first training batch so that the inverse (data -> base) output has
  zero mean and unit variance per channel.

  #### References

  [1]: Diederik P. Kingma and Prafulla Dhariwal. Glow: Generative Flow with Invertible
       1x1 Convolutions. NeurIPS 2018. https://arxiv.org/abs/1807.03039
  """

  def __init__(self, loc, log_scale, validate_args=False, name="act_norm"):
    """Creates the bijector.

    Variables (`tf.Variable`, or Keras variables, whose `tf.Variable` is used) are kept
    as variables and read on every call, so gradients reach them and the bijector's
    `trainable_variables` and composite-tensor form carry them.

    Args:
      loc: float tensor or variable `[..., C]`, the shift applied after scaling.
      log_scale: float tensor or variable `[..., C]`, the log of the per-channel scale.
      validate_args: if True, check that `loc` and `log_scale` are finite and that
        inputs have `C` channels.
      name: name scope of the bijector's ops.
    """
    loc = variable_tracking.unwrap_variable(loc)
    log_scale = variable_tracking.unwrap_variable(log_scale)
    parameters = dict(locals())
    with tf.name_scope(name) as name:
      dtype = _checks.common_dtype([loc, log_scale])
      self._loc = tensor_util.convert_nonref_to_tensor(loc, dtype=dtype, name="loc")
      self._log_scale = tensor_util.convert_nonref_to_tensor(
          log_scale, dtype=dtype, name="log_scale")
      if self._loc.shape.rank == 0 or self._log_scale.shape.rank == 0:
        raise ValueError(
            "ActNorm's loc and log_scale must have a channel axis, e.g. shape [C]; "
            f"got shapes {self._loc.shape} and {self._log_scale.shape}.")
      super().__init__(forward_min_event_ndims=1, is_constant_jacobian=True, dtype=dtype,
                       validate_args=validate_args, parameters=parameters, name=name)

  @property
  def loc(self):
    return self._loc

  @property
  def log_scale(self):
    return self._log_scale

  @classmethod
  def _parameter_properties(cls, dtype):
    return {
        "loc": tfp.util.ParameterProperties(event_ndims=1),
        "log_scale": tfp.util.ParameterProperties(event_ndims=1),
    }

  @classmethod
  def _is_increasing(cls):
    return True

  def _parameter_control_dependencies(self, is_init):
    if not self.validate_args or not is_init:
      return []
    return (_checks.assert_finite(self._loc, "ActNorm: loc must be finite.") +
            _checks.assert_finite(self._log_scale, "ActNorm: log_scale must be finite."))

  def _channels(self):
    return tf.compat.dimension_value(self._log_scale.shape[-1])

  def _forward(self, x):
    x = _checks.check_last_dim(x, self._channels(), "ActNorm")
    return x * tf.exp(self._log_scale) + self._loc

  def _inverse(self, y):
    y = _checks.check_last_dim(y, self._channels(), "ActNorm")
    return (y - self._loc) * tf.exp(-self._log_scale)

  def _forward_log_det_jacobian(self, x):
    return tf.reduce_sum(self._log_scale, axis=-1)
