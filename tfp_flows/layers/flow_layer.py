"""The layer pattern every flow layer follows: weights in Keras, math in a fresh bijector."""

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_flows.bijectors import conditioning
from tfp_flows.bijectors import variable_tracking

__all__ = ["FlowLayer", "FlowChain"]


class FlowLayer(keras.layers.Layer):
  """Base class: a Keras layer that owns weights and builds a bijector from them.

  `.bijector` is a fresh `tfp.bijectors.Bijector` built from the current weights on every
  access (so it always sees trained values and is never stale). Each build equals only
  itself, so TFP's cache never serves one build what another computed; where TFP needs
  two equal bijectors (a KL between two transformed distributions, a `tf.function`
  traced once for a bijector argument), hold one build. Its forward maps
  base -> data, as TFP expects. It reads the weights when called, not when built, and
  holds them: `layer.bijector.trainable_variables` are the layer's (as `tf.Variable`s),
  so TFP's optimisation loops train the layer through its bijector.

  Calling the layer runs the data -> base direction and returns `(z, ildj)`:
  `z = bijector.inverse(x)` and `ildj = bijector.inverse_log_det_jacobian(x)` summed over
  one event. `FlowModel` walks its layers this way so that training-time behaviour
  (ActNorm's data-dependent initialisation, dequantisation noise) can happen in order.

  Subclasses implement `build(inputs_shape, context_shape=None)` and `make_bijector()`;
  they may override `call` for training-time behaviour, and `postprocess_sample`
  (identity here). `build` creates every weight, those of conditioner networks
  included, so Keras' standard build path (a symbolic call on `keras.Input`, `.keras`
  loading) restores them; layers whose weights depend on the context read
  `context_shape`, which Keras passes from the `context` call argument.

  Dtypes: float32 (default) and float64 (`dtype="float64"`, or
  `keras.config.set_floatx("float64")`). Mixed precision policies (`mixed_float16`,
  `mixed_bfloat16`) are a `ValueError` at construction: a flow's inverses, log-dets and
  triangular solves lose the accuracy the density needs in 16 bits, so give the flow
  layers `dtype="float32"` and keep the policy for the rest of the model.

  Args:
    conditional: whether this layer reads the flow's context. A non-conditional layer
      ignores the context passed to it.

  Raises:
    ValueError: for a mixed precision dtype policy.
  """

  def __init__(self, conditional=False, **kwargs):
    super().__init__(**kwargs)
    policy = self.dtype_policy
    if policy.compute_dtype != policy.variable_dtype:
      raise ValueError(
          f"{type(self).__name__} does not support the mixed precision policy "
          f"{policy.name!r}: flow layers compute in float32 or float64. Pass "
          "dtype='float32' to the flow layers (the rest of the model may keep "
          f"{policy.name!r}), or set keras.mixed_precision.set_global_policy('float32').")
    self.conditional = bool(conditional)

  def build(self, inputs_shape, context_shape=None):
    self.event_ndims = len(inputs_shape) - 1
    super().build(inputs_shape)
    if not self.trainable:
      # Frozen before it was built (`trainable=False`, a `.keras` reload, clone_model):
      # the networks built since are frozen too, as Keras freezes existing sublayers.
      # (`self.trainable = False` would do nothing: TensorFlow's attribute tracking
      # skips assigning a value that is already there.)
      self._set_trainable(False)

  @property
  def trainable(self):
    """Whether `fit` trains this layer, and TFP's loops through its bijector (settable).

    Setting it also marks the `tf.Variable`s inside the layer's Keras variables, which
    TFP finds, so a bijector or `model.distribution` built before still sees it. A
    network inside the layer frozen directly (`layer.net.trainable = False`) is seen
    from the next build of the bijector on.
    """
    return super().trainable

  @trainable.setter
  def trainable(self, value):
    self._set_trainable(value)

  def _set_trainable(self, value):
    super(FlowLayer, type(self)).trainable.__set__(self, value)
    variable_tracking.match_keras_trainable(self.weights)

  @property
  def bijector(self):
    if not self.built:
      raise ValueError(f"Layer {self.name!r} has no weights yet: call it on data or put "
                       "it in a FlowModel (which builds it) before asking for .bijector.")
    # The bijector holds the layer's variables (the tf.Variables inside the Keras ones),
    # so its `trainable_variables` are the layer's: tfp.vi and user loops train them.
    return variable_tracking.hold_variables(self.make_bijector(), self.weights)

  def make_bijector(self):
    raise NotImplementedError

  def bijector_name(self, suffix=""):
    """The name for this layer's bijector(s): the layer name, the same on every rebuild.

    TFP routes `conditional_input` through `tfb.Chain` by bijector name, and makes a
    name unique inside a graph ("coupling_1"), so a bijector rebuilt in a `tf.function`
    would no longer match kwargs computed from another build; the name returned is the
    form TFP keeps as given (`tfp_flows.bijectors.conditioning.stable_name`), and the
    bijector's `.name` is `layer.name + suffix`.
    """
    return conditioning.stable_name(self.name + suffix)

  def call(self, inputs, context=None, training=None):
    bijector = self.bijector
    kwargs = conditioning.conditional_kwargs(
        bijector, context if self.conditional else None)
    z = bijector.inverse(inputs, **kwargs)
    ildj = bijector.inverse_log_det_jacobian(inputs, event_ndims=self.event_ndims, **kwargs)
    return z, ildj + tf.zeros(tf.shape(inputs)[:1], inputs.dtype)

  def compute_output_shape(self, inputs_shape, context_shape=None):
    """Shapes of `(z, ildj)` for `inputs` of shape `[N, *event_shape]`.

    Keras matches these argument names to `call`'s (`inputs`, `context`) when the
    layer is called on `keras.Input`s in a functional or Sequential model.
    """
    latent = self.bijector.inverse_event_shape(inputs_shape[1:])
    return (inputs_shape[0],) + tuple(latent.as_list()), (inputs_shape[0],)

  def postprocess_sample(self, x):
    """Maps a sample of this layer's data side to what users get back (identity here)."""
    return x

  def get_config(self):
    return {**super().get_config(), "conditional": self.conditional}


@keras.saving.register_keras_serializable(package="tfp_flows")
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

  def build(self, inputs_shape, context_shape=None):
    shape = tuple(inputs_shape)
    for layer in self.flow_layers:
      # Layers restored by `.keras` loading arrive built; building again would add weights.
      if not layer.built:
        _build_member(layer, shape, context_shape)
      shape = (shape[0],) + tuple(layer.bijector.inverse_event_shape(shape[1:]))
    super().build(inputs_shape, context_shape)

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


def _build_member(layer, inputs_shape, context_shape=None):
  """Builds `layer` on `inputs_shape`, passing `context_shape` to layers that read it.

  Conditional layers and chains (whose members may be conditional) take
  `build(inputs_shape, context_shape)`; every other layer ignores the context, so it is
  built on `inputs_shape` alone (their `build` may take only that).
  """
  if context_shape is not None and (layer.conditional or isinstance(layer, FlowChain)):
    layer.build(inputs_shape, context_shape)
  else:
    layer.build(inputs_shape)
