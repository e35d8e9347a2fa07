"""Keras coupling layers: a conditioner network plus an elementwise transformer.

`Coupling(transformer=...)` is the one coupling layer; `AffineCoupling` and
`AdditiveCoupling` (and `SplineCoupling`) are it with a fixed transformer and that
transformer's arguments spelled out, kept for their callers and saved configs.
"""

import math

import keras
import tensorflow as tf

from tfp_flows import nets
from tfp_flows.bijectors import coupling
from tfp_flows.bijectors import transformers
from tfp_flows.layers import flow_layer
from tfp_flows.layers import transformer_spec

__all__ = ["Coupling", "CouplingLayer", "AffineCoupling", "AdditiveCoupling"]

_MASKS = ("half", "checkerboard")


@keras.saving.register_keras_serializable(package="tfp_flows")
class Coupling(flow_layer.FlowLayer):
  """Owns the conditioner of a `tfp_flows.bijectors.Coupling` with any elementwise transformer.

  The entries the mask moves, x_b, are transformed given the kept ones, x_a:

  ```none
  forward (base -> data):  y_a = x_a,  y_b = T(x_b; h(x_a)),  log|dy/dx| = sum log T'
  inverse (data -> base):  x_a = y_a,  x_b = T^{-1}(y_b; h(y_a))
  ```

  with T the transformer (affine: Real NVP / Glow; additive: NICE; rational-quadratic
  spline: NSF) and h the conditioner. Both directions cost one conditioner pass.

  Vectors `[D]` get an `MLP` conditioner, images `[H, W, C]` a `GlowConvNet`; the last
  layer starts at zero, so the layer starts as the identity. A context (when the layer
  is `conditional`) is concatenated to the MLP input, or tiled over the image as extra
  channels.

  Args:
    transformer: the elementwise transformer: a `tfp_flows.bijectors.Transformer`, a
      name ("affine", "additive", "rational_quadratic", "circular_rational_quadratic")
      for its defaults, or `{"name": ..., "config": {...}}` (what `get_config` writes);
      see `tfp_flows.layers.transformer_spec`.
    mask: "half" (split the last axis in two) or "checkerboard" (alternate entries of a
      vector, or pixels of an image).
    reverse: transform the other half / the other checkerboard colour.
    hidden_units: MLP hidden sizes (vectors).
    hidden_channels: conv net width (images).
    conditioner_layout: the MLP conditioner's weight layout (vectors): "stacked" or
      "dense", see `tfp_flows.nets.MLP`. A config without it, written before the stacked
      layout existed, loads as "dense".
  """

  def __init__(self, transformer, mask="half", reverse=False, hidden_units=(128, 128),
               hidden_channels=512, conditioner_layout="stacked", **kwargs):
    super().__init__(**kwargs)
    self.transformer = transformer_spec.get(transformer)
    if mask not in _MASKS:
      raise ValueError(f"mask must be one of {_MASKS}; got {mask!r}.")
    self.mask = mask
    self.reverse = bool(reverse)
    self.hidden_units = tuple(int(u) for u in hidden_units)
    self.hidden_channels = int(hidden_channels)
    # Checked here, not only by the MLP, so that an image coupling rejects it as well.
    if conditioner_layout not in ("stacked", "dense"):
      raise ValueError(f"conditioner_layout must be 'stacked' or 'dense'; got "
                       f"{conditioner_layout!r}.")
    self.conditioner_layout = conditioner_layout

  def build(self, inputs_shape, context_shape=None):
    """Creates the conditioner's weights for inputs `[N, *event_shape]`.

    The weights exist after `build`, so Keras' standard build path (a symbolic call,
    `.keras` loading) restores them. A conditional layer reads the context's shape:
    the conditioner's input width includes it (vectors: `context_shape[-1]` more
    features; images: `prod(context_shape[1:])` more channels). Built without one
    (FlowModel's constructor builds its flow, then calls it with a context), a
    conditional layer creates its conditioner's weights on the first call.

    Raises:
      ValueError: for an event shape that is not `[D]` or `[H, W, C]`, or a half split
        of fewer than 2 channels.
    """
    event_shape = [int(d) for d in inputs_shape[1:]]
    if len(event_shape) not in (1, 3):
      raise ValueError("Coupling layers take vectors [N, D] or images [N, H, W, C]; got "
                       f"input shape {inputs_shape}.")
    channels = event_shape[-1]
    num_params = self.transformer.num_params
    if self.mask == "half":
      if channels < 2:
        raise ValueError(f"mask='half' needs at least 2 channels; got {channels}. Use "
                         "mask='checkerboard' or squeeze the image first.")
      moved = channels - channels // 2 if not self.reverse else channels // 2
      kept = channels - moved
      self._mask_tensor = None
    else:
      moved = kept = channels
      if len(event_shape) == 1:
        parity = tf.range(channels) % 2
        self._mask_tensor = tf.cast(parity == int(self.reverse), self.compute_dtype)
      else:
        self._mask_tensor = coupling.checkerboard_mask(
            *event_shape, parity=int(self.reverse), dtype=self.compute_dtype)
    context_known = not self.conditional or context_shape is not None
    if len(event_shape) == 1:
      self.net = nets.MLP(moved * num_params, self.hidden_units,
                          layout=self.conditioner_layout, dtype=self.dtype_policy,
                          name="conditioner")
      if context_known:
        self.net.build((None, kept), None if context_shape is None
                       else (None, int(context_shape[-1])))
    else:
      self.net = nets.GlowConvNet(moved * num_params, self.hidden_channels,
                                  dtype=self.dtype_policy, name="conditioner")
      if context_known:
        context_channels = 0 if context_shape is None else math.prod(context_shape[1:])
        self.net.build((None, *event_shape[:2], kept + int(context_channels)))
    self._event_shape = event_shape
    super().build(inputs_shape, context_shape)

  def _conditioner(self, x_a, context=None):
    if len(self._event_shape) == 1:
      return self.net(x_a, context)
    if context is not None:
      context = tf.cast(tf.reshape(context, [tf.shape(x_a)[0], 1, 1, -1]), x_a.dtype)
      x_a = tf.concat([x_a, tf.tile(context, [1] + self._event_shape[:2] + [1])], -1)
    return self.net(x_a)

  def make_bijector(self):
    return coupling.Coupling(
        self._conditioner, self.transformer, num_channels=self._event_shape[-1],
        event_ndims=len(self._event_shape), reverse=self.reverse, mask=self._mask_tensor,
        conditional=self.conditional, dtype=self.compute_dtype, name=self.bijector_name())

  def get_config(self):
    return {**super().get_config(), "transformer": transformer_spec.serialize(self.transformer),
            "mask": self.mask, "reverse": self.reverse,
            "hidden_units": list(self.hidden_units),
            "hidden_channels": self.hidden_channels,
            "conditioner_layout": self.conditioner_layout}

  @classmethod
  def from_config(cls, config):
    return super().from_config({"conditioner_layout": "dense", **config})


CouplingLayer = Coupling  # The former name of the base class, kept for callers.


@keras.saving.register_keras_serializable(package="tfp_flows")
class AffineCoupling(transformer_spec.AffineArguments, Coupling):
  """Affine coupling (Real NVP / Glow): `y_b = s(x_a) * x_b + t(x_a)`.

  `Coupling(transformer=AffineTransformer(scale, clamp), ...)`, with the transformer's
  arguments as the layer's own (and in its config).

  Args:
    scale: "sigmoid" (Glow's sigmoid(h + 2), rescaled to 1 at h = 0) or "exp" (soft
      clamped); see `tfp_flows.bijectors.AffineTransformer`.
    clamp: bound on |log s| for scale="exp".
    **kwargs: `Coupling` arguments (mask, reverse, hidden sizes, conditional).
  """

  def __init__(self, scale="sigmoid", clamp=2.0, **kwargs):
    super().__init__(scale, clamp, **kwargs)


@keras.saving.register_keras_serializable(package="tfp_flows")
class AdditiveCoupling(Coupling):
  """Additive coupling (NICE): `y_b = x_b + t(x_a)`, volume preserving.

  `Coupling(transformer="additive", ...)`; its config has no `transformer` entry.
  """

  def __init__(self, **kwargs):
    super().__init__(transformers.AdditiveTransformer(), **kwargs)

  def get_config(self):
    config = super().get_config()
    del config["transformer"]
    return config
