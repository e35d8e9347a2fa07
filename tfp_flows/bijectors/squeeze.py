"""Squeeze: space-to-depth by a factor f, the shape change of multi-scale image flows."""

import tensorflow as tf
import tensorflow_probability as tfp

__all__ = ["Squeeze"]

tfb = tfp.bijectors


class Squeeze(tfb.AutoCompositeTensorBijector):
  """Space-to-depth: `[..., H, W, C] -> [..., H/f, W/f, f*f*C]`, a permutation of entries.

  ```none
  forward:  y[..., i, j, (a*f + b)*C + c] = x[..., i*f + a, j*f + b, c]
            (the layout of tf.nn.space_to_depth)
  inverse:  depth-to-space, the same permutation undone
  log-det:  0 (a permutation)
  ```

  Cost O(size of x) either way. In a data -> base flow (Glow) the data side squeezes on
  the way to the base, so `tfp_flows.layers.Squeeze` uses `tfb.Invert(Squeeze())`.

  Reference: Dinh et al., Real NVP, https://arxiv.org/abs/1605.08803 (Sec. 3.6).
  """

  def __init__(self, factor=2, validate_args=False, name="squeeze"):
    """Args:
      factor: positive int f; H and W must be divisible by f.
      validate_args: also assert, in the graph, that event shapes given as tensors
        whose values are known only at run time divide by f (static shapes are
        always checked).
      name: name scope.
    """
    parameters = dict(locals())
    if int(factor) != factor or factor < 1:
      raise ValueError(f"factor must be a positive integer; got {factor!r}.")
    self._factor = int(factor)
    with tf.name_scope(name) as name:
      super().__init__(forward_min_event_ndims=3, is_constant_jacobian=True,
                       validate_args=validate_args, parameters=parameters, name=name)

  @property
  def factor(self):
    return self._factor

  @classmethod
  def _parameter_properties(cls, dtype):
    return {}

  @staticmethod
  def _check_rank(shape):
    if len(shape) < 3:
      raise ValueError("Squeeze needs events of rank 3 or more, [..., H, W, C]; got event "
                       f"shape {list(shape)}.")

  def _squeezed_shape(self, shape):
    self._check_rank(shape)
    h, w, c = shape[-3:]
    f = self._factor
    if h is not None and h % f or w is not None and w % f:
      raise ValueError(f"Squeeze by {f} needs height and width divisible by {f}; got "
                       f"event shape {list(shape[-3:])}.")
    return [None if h is None else h // f, None if w is None else w // f,
            None if c is None else c * f * f]

  def _unsqueezed_shape(self, shape):
    self._check_rank(shape)
    h, w, c = shape[-3:]
    f = self._factor
    if c is not None and c % (f * f):
      raise ValueError(f"Unsqueeze by {f} needs channels divisible by {f * f}; got "
                       f"event shape {list(shape[-3:])}.")
    return [None if h is None else h * f, None if w is None else w * f,
            None if c is None else c // (f * f)]

  def _forward(self, x):
    h, w, c = self._static_event(x)
    self._squeezed_shape([h, w, c])
    f = self._factor
    batch = tf.shape(x)[:-3]
    rank = x.shape.rank
    x = tf.reshape(x, tf.concat([batch, [h // f, f, w // f, f, c]], 0))
    b = rank - 3
    x = tf.transpose(x, list(range(b)) + [b, b + 2, b + 1, b + 3, b + 4])
    return tf.reshape(x, tf.concat([batch, [h // f, w // f, f * f * c]], 0))

  def _inverse(self, y):
    h, w, c = self._static_event(y)
    self._unsqueezed_shape([h, w, c])
    f = self._factor
    batch = tf.shape(y)[:-3]
    b = y.shape.rank - 3
    y = tf.reshape(y, tf.concat([batch, [h, w, f, f, c // (f * f)]], 0))
    y = tf.transpose(y, list(range(b)) + [b, b + 2, b + 1, b + 3, b + 4])
    return tf.reshape(y, tf.concat([batch, [h * f, w * f, c // (f * f)]], 0))

  @staticmethod
  def _static_event(x):
    if x.shape.rank is None or x.shape.rank < 3 or None in x.shape[-3:]:
      raise ValueError("Squeeze needs inputs of known rank >= 3 with a static [H, W, C] "
                       f"event shape; got shape {x.shape}.")
    return x.shape[-3:].as_list()

  def _forward_log_det_jacobian(self, x):
    return tf.zeros([], dtype=x.dtype)

  def _forward_event_shape(self, input_shape):
    if input_shape.rank is None:  # unknown in, unknown out, as stock reshaping bijectors
      return input_shape
    return input_shape[:-3].concatenate(self._squeezed_shape(input_shape))

  def _inverse_event_shape(self, output_shape):
    if output_shape.rank is None:
      return output_shape
    return output_shape[:-3].concatenate(self._unsqueezed_shape(output_shape))

  def _forward_event_shape_tensor(self, input_shape):
    f = self._factor
    known = tf.get_static_value(input_shape)
    if known is not None:  # the static check, so a shape given as a tensor is not rounded
      self._squeezed_shape([int(d) for d in known])
    elif self.validate_args:
      input_shape = _asserting_divisible(input_shape, input_shape[-3:-1], f,
                                         f"Squeeze by {f} needs height and width divisible "
                                         f"by {f}.")
    return tf.concat([input_shape[:-3], input_shape[-3:-1] // f,
                      input_shape[-1:] * f * f], 0)

  def _inverse_event_shape_tensor(self, output_shape):
    f = self._factor
    known = tf.get_static_value(output_shape)
    if known is not None:
      self._unsqueezed_shape([int(d) for d in known])
    elif self.validate_args:
      output_shape = _asserting_divisible(output_shape, output_shape[-1:], f * f,
                                          f"Unsqueeze by {f} needs channels divisible by "
                                          f"{f * f}.")
    return tf.concat([output_shape[:-3], output_shape[-3:-1] * f,
                      output_shape[-1:] // (f * f)], 0)


def _asserting_divisible(shape, sizes, divisor, message):
  """`shape`, after an assertion that every entry of `sizes` is divisible by `divisor`."""
  with tf.control_dependencies([tf.debugging.assert_equal(sizes % divisor, 0,
                                                          message=message)]):
    return tf.identity(shape)
