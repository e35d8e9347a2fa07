"""Keras flow layer for a learned, optionally class-conditional, diagonal Gaussian prior."""

import keras
import tensorflow as tf

from tfp_flows.bijectors import conditional_affine
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

  def build(self, input_shape):
    channels = int(input_shape[-1])
    rows = self.num_classes or 1
    self.table = self.add_weight(shape=(rows, 2 * channels), initializer="zeros",
                                 name="table")
    self._channels = channels
    super().build(input_shape)

  def _shift_and_log_scale(self, labels=None):
    if labels is None:
      row = self.table[0]
    else:
      labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
      row = tf.gather(self.table, labels)
      row = tf.reshape(row, [-1] + [1] * (self.event_ndims - 1) + [2 * self._channels])
    return row[..., :self._channels], row[..., self._channels:]

  def make_bijector(self):
    return conditional_affine.ConditionalAffine(
        self._shift_and_log_scale, event_ndims=self.event_ndims,
        conditional=self.conditional, dtype=self.compute_dtype, name=self.bijector_name())

  def get_config(self):
    config = super().get_config()
    config.pop("conditional")
    return {**config, "num_classes": self.num_classes}
