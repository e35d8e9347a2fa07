"""The layer pattern every flow layer follows: weights in Keras, math in a fresh bijector."""

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_flows.bijectors import conditioning

__all__ = ["FlowLayer", "FlowChain"]


class FlowLayer(keras.layers.Layer):
  """Base class: a Keras layer that owns weights and builds a bijector from them.

  `.bijector` is a fresh `tfp.bijectors.Bijector` built from the current weights on every
  access (so it always sees trained values and is never stale). Its forward maps
  base -> data, as TFP expects.

  Calling the layer runs the data -> base direction and returns `(z, ildj)`:
  `z = bijector.inverse(x)` and `ildj = bijector.inverse_log_det_jacobian(x)` summed over
  one event. `FlowModel` walks its layers this way so that training-time behaviour
  (ActNorm's data-dependent initialisation, dequantisation noise) can happen in order.

  Subclasses implement `build(input_shape)` and `make_bijector()`; they may override
  `call` for training-time behaviour, and `postprocess_sample` (identity here).

  Args:
    conditional: whether this layer reads the flow's context. A non-conditional layer
      ignores the context passed to it.
  """

  def __init__(self, conditional=False, **kwargs):
    super().__init__(**kwargs)
    self.conditional = bool(conditional)

  def build(self, input_shape):
    self.event_ndims = len(input_shape) - 1
    super().build(input_shape)

  @property
  def bijector(self):
    if not self.built:
      raise ValueError(f"Layer {self.name!r} has no weights yet: call it on data or put "
                       "it in a FlowModel (which builds it) before asking for .bijector.")
    return self.make_bijector()

  def make_bijector(self):
    raise NotImplementedError

  def bijector_name(self, suffix=""):
    """The name for this layer's bijector(s): the layer name, the same on every rebuild.

    TFP routes `conditional_input` through `tfb.Chain` by bijector name, and a name
    given without a trailing "/" is made unique inside a graph ("coupling_1"), so a
    bijector rebuilt in a `tf.function` would no longer match kwargs computed from
    another build. TFP keeps a name that ends in "/" as given.
    """
    return f"{self.name}{suffix}/"

  def call(self, inputs, context=None, training=None):
    bijector = self.bijector
    kwargs = conditioning.conditional_kwargs(
        bijector, context if self.conditional else None)
    z = bijector.inverse(inputs, **kwargs)
    ildj = bijector.inverse_log_det_jacobian(inputs, event_ndims=self.event_ndims, **kwargs)
    return z, ildj + tf.zeros(tf.shape(inputs)[:1], inputs.dtype)

  def compute_output_shape(self, input_shape, context_shape=None):
    latent = self.bijector.inverse_event_shape(input_shape[1:])
    return (input_shape[0],) + tuple(latent), (input_shape[0],)

  def postprocess_sample(self, x):
    """Maps a sample of this layer's data side to what users get back (identity here)."""
    return x

  def get_config(self):
    return {**super().get_config(), "conditional": self.conditional}


class FlowChain(FlowLayer):
  """A sequence of flow layers, listed from the data side to the base side (like tfb.Chain).

  Its bijector is `tfb.Chain([layer.bijector for layer in flow_layers])`; calling it walks
  the layers data -> base and sums their log-dets.

  Args:
    flow_layers: list of `FlowLayer`s, data side first.
  """

  def __init__(self, flow_layers, **kwargs):
    super().__init__(**kwargs)
    flow_layers = list(flow_layers)
    for layer in flow_layers:
      if not isinstance(layer, FlowLayer):
        raise TypeError(f"{type(self).__name__} takes tfp_flows FlowLayers; got {layer!r}.")
    self.flow_layers = flow_layers

  def build(self, input_shape):
    shape = tuple(input_shape)
    for layer in self.flow_layers:
      # Layers restored by `.keras` loading arrive built; building again would add weights.
      if not layer.built:
        layer.build(shape)
      shape = (shape[0],) + tuple(layer.bijector.inverse_event_shape(shape[1:]))
    super().build(input_shape)

  def make_bijector(self):
    return tfp.bijectors.Chain([layer.bijector for layer in self.flow_layers],
                               name=self.bijector_name())

  def call(self, inputs, context=None, training=None):
    total = tf.zeros(tf.shape(inputs)[:1], inputs.dtype)
    z = inputs
    for layer in self.flow_layers:
      z, ildj = layer(z, context=context, training=training)
      total += ildj
    return z, total

  def postprocess_sample(self, x):
    return self.flow_layers[0].postprocess_sample(x) if self.flow_layers else x

  def get_config(self):
    return {**super().get_config(),
            "flow_layers": [keras.saving.serialize_keras_object(l) for l in self.flow_layers]}

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    config["flow_layers"] = [keras.saving.deserialize_keras_object(c)
                             for c in config["flow_layers"]]
    return cls(**config)

