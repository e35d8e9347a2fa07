"""Keras flow layer that squeezes images (space-to-depth) on the way to the base."""

import keras
import tensorflow_probability as tfp

from tfp_flows.bijectors import squeeze
from tfp_flows.layers import flow_layer

__all__ = ["Squeeze"]


@keras.saving.register_keras_serializable(package="tfp_flows")
class Squeeze(flow_layer.FlowLayer):
  """Data `[H, W, C]` -> latent `[H/f, W/f, f*f*C]` (data -> base); no weights.

  Its bijector is `tfb.Invert(tfp_flows.bijectors.Squeeze(f))`: forward (base -> data)
  is depth-to-space.

  Args:
    factor: the squeeze factor f.
  """

  def __init__(self, factor=2, **kwargs):
    super().__init__(**kwargs)
    self.factor = int(factor)
    squeeze.Squeeze(self.factor)  # validates the factor now, not at first use

  def make_bijector(self):
    return tfp.bijectors.Invert(squeeze.Squeeze(self.factor), name=self.bijector_name())

  def get_config(self):
    return {**super().get_config(), "factor": self.factor}
