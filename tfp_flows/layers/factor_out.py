"""Keras flow layer for one scale of a multi-scale flow: split prior and factor-out."""

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_flows import nets
from tfp_flows.bijectors import coupling
from tfp_flows.bijectors import factor_out
from tfp_flows.bijectors import transformers
from tfp_flows.layers import flow_layer

__all__ = ["FactorOut"]


@keras.saving.register_keras_serializable(package="tfp_flows")
class FactorOut(flow_layer.FlowChain):
  """Half the channels leave the flow with a learned Gaussian; `flow_layers` get the rest.

  Data -> base on `x = [x_a, x_b]` (`x_a` the first `C // 2` channels):

  ```none
  1. split prior:   e_b = (x_b - mu(x_a)) / sigma(x_a)     (Glow's conditional Gaussian,
                    mu and log sigma from a zero-initialised 3x3 conv of x_a)
  2. factor out:    z_a = flow_layers(x_a), reshaped back to x_a's shape
  output:           [z_a, e_b], a standard normal under the base
  ```

  Its bijector is `tfb.Chain([Coupling(split prior), tfp_flows.bijectors.FactorOut(...)])`.
  Sublayers may change shape (e.g. `Squeeze`) and nest further `FactorOut`s.

  Args:
    flow_layers: the next scale's layers, data side first, acting on `x_a`.
  """

  def build(self, inputs_shape, context_shape=None):
    channels = int(inputs_shape[-1])
    if channels < 2:
      raise ValueError(f"FactorOut needs at least 2 channels; got shape {inputs_shape}.")
    self._num_kept = channels // 2
    self._event_shape = [int(d) for d in inputs_shape[1:]]
    self.prior_net = nets.GlowConvNet(2 * (channels - self._num_kept), hidden_channels=0,
                                      dtype=self.dtype_policy, name="split_prior")
    kept_shape = tuple(inputs_shape[:-1]) + (self._num_kept,)
    # The split prior's weights exist after build, so `.keras` loading restores them.
    self.prior_net.build(kept_shape)
    super().build(kept_shape, context_shape)
    self.event_ndims = len(inputs_shape) - 1

  def _split_prior(self):
    return coupling.Coupling(
        self.prior_net, transformers.AffineTransformer(scale="exp", clamp=5.0),
        num_channels=self._event_shape[-1], event_ndims=len(self._event_shape),
        split_index=self._num_kept, dtype=self.compute_dtype, name=self.bijector_name("_prior"))

  def make_bijector(self):
    inner = super().make_bijector()
    return tfp.bijectors.Chain(
        [self._split_prior(),
         factor_out.FactorOut(inner, self._num_kept, self._event_shape,
                              name=self.bijector_name("_factor_out"))],
        name=self.bijector_name())

  def call(self, inputs, context=None, training=None):
    prior = self._split_prior()
    x = prior.inverse(inputs)
    ildj = prior.inverse_log_det_jacobian(inputs, event_ndims=self.event_ndims)
    kept = x[..., :self._num_kept]
    z_a, inner_ildj = super().call(kept, context=context, training=training)
    z_a = tf.reshape(z_a, tf.shape(kept))
    return tf.concat([z_a, x[..., self._num_kept:]], axis=-1), ildj + inner_ildj
