"""Keras flow layer for a learned, optionally class-conditional, diagonal Gaussian prior."""

import keras
import tensorflow as tf

from tfp_flows.bijectors import conditional_affine
from tfp_flows.numerics import integer_check
from tfp_flows.layers import flow_layer

__all__ = ["GaussianPrior"]


@keras.saving.register_keras_serializable(package="tfp_flows")
class GaussianPrior(flow_layer.FlowLayer):
  """Makes a standard normal base into N(mu, sigma^2) per channel, mu and sigma learned.

  Placed last (base side) in a flow, it is Glow's learned top prior. With `num_classes`
  set, mu and log sigma come from a zero-initialised table indexed by the integer label
  (Glow's class-conditional prior); the layer is then conditional on the flow's context.
  Its bijector is `tfp_flows.bijectors.ConditionalAffine`.

  Args:
    num_classes: None for an unconditional prior, else the number of labels.
  """

  def __init__(self, num_classes=None, **kwargs):
    kwargs.setdefault("conditional", num_classes is not None)
    super().__init__(**kwargs)
    if num_classes is not None and int(num_classes) < 2:
      raise ValueError(f"num_classes must be at least 2 or None; got {num_classes!r}.")
    self.num_classes = None if num_classes is None else int(num_classes)

  def build(self, inputs_shape, context_shape=None):
    channels = int(inputs_shape[-1])
    rows = self.num_classes or 1
    self.table = self.add_weight(shape=(rows, 2 * channels), initializer="zeros",
                                 name="table")
    self._channels = channels
    super().build(inputs_shape, context_shape)

  def _shift_and_log_scale(self, labels=None):
    """`(mu, log sigma)`: the table's row, or one row per label, shaped to broadcast.

    Labels of any batch shape `B` give `B + [1] * (event_ndims - 1) + [C]`, so a single
    label scores one event with a log-det of shape `[]`. Labels must be integers (or
    whole floats) in `[0, num_classes)`: any other label is an `InvalidArgumentError`
    eagerly and in graphs, and makes its rows NaN (under XLA, which cannot raise, and
    where `tf.gather` would silently clamp it to the nearest class).
    """
    if labels is None:
      row = self.table[0]
    else:
      labels = tf.convert_to_tensor(labels)
      ok = integer_check.integers_in_range(
          labels, self.num_classes,
          f"{self.name}: class labels must be integers in [0, {self.num_classes}) "
          f"(num_classes={self.num_classes}); pass each example's class index.")
      index = tf.cast(tf.where(ok, labels, tf.zeros_like(labels)), tf.int32)
      row = integer_check.nan_where_not(ok, tf.gather(self.table, index))
      row = tf.reshape(row, tf.concat(
          [tf.shape(index), [1] * (self.event_ndims - 1) + [2 * self._channels]], axis=0))
    return row[..., :self._channels], row[..., self._channels:]

  def make_bijector(self):
    return conditional_affine.ConditionalAffine(
        self._shift_and_log_scale, event_ndims=self.event_ndims,
        conditional=self.conditional, dtype=self.compute_dtype, name=self.bijector_name())

  def get_config(self):
    config = super().get_config()
    config.pop("conditional")
    return {**config, "num_classes": self.num_classes}
