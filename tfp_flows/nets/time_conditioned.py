"""Time-conditioned vector fields `f(t, z)` for continuous flows.

Two ways for time to enter (`time_conditioning`): "concat_squash" (FFJORD's default
layer: every layer gated and shifted by t) and "concat" (t appended to the field's
input, then plain layers: the field of TFP's `tfb.FFJORD` examples).

Besides `call(z, t)`, each net computes Jacobian-vector products in forward mode,
`call_with_tangents(z, t, tangents) -> (f, J_f(z) v for each tangent v)`, by carrying
the tangents through the layers (`tfp_flows.nets.time_layers`) with the primal, and
the activation multiplies them by the activation's derivative. f and K tangents cost
about 1 + K passes of the net and no backward pass: the continuous flows' traces use
this (see `tfp_flows.bijectors.ContinuousFlow`, `jvp_fn`). The activations with a
closed-form derivative are listed in `_ACTIVATION_DERIVATIVES`; others fall back to
reverse-mode autodiff in the flow.
"""

import keras
from keras import ops

from tfp_flows.nets import time_layers
from tfp_flows.numerics import checks

__all__ = ["TimeConditionedMLP", "TimeConditionedConvNet", "TIME_CONDITIONINGS"]

TIME_CONDITIONINGS = ("concat_squash", "concat")


def _softplus_and_derivative(h):
  # One exponential serves both: softplus(h) = max(h, 0) + log(1 + e), sigmoid(h) =
  # (1 or e) / (1 + e) with e = exp(-|h|) <= 1, so nothing overflows.
  return ops.softplus(h), ops.sigmoid(h)


def _tanh_and_derivative(h):
  y = ops.tanh(h)
  return y, 1.0 - ops.square(y)


def _sigmoid_and_derivative(h):
  y = ops.sigmoid(h)
  return y, y * (1.0 - y)


def _swish_and_derivative(h):
  gate = ops.sigmoid(h)
  return h * gate, gate * (1.0 + h * (1.0 - gate))


def _linear_and_derivative(h):
  return h, ops.ones_like(h)


# Activations with a closed-form derivative: the nets' forward-mode products need it.
_ACTIVATION_DERIVATIVES = {
    "softplus": _softplus_and_derivative,
    "tanh": _tanh_and_derivative,
    "sigmoid": _sigmoid_and_derivative,
    "swish": _swish_and_derivative,
    "silu": _swish_and_derivative,
    "linear": _linear_and_derivative,
}


class _TimeConditionedNet(keras.layers.Layer):
  """Time-conditioned layers with a smooth activation between them, zero output at init.

  Subclasses set `_layer_classes`, the layer class of each `time_conditioning`, and pass
  their widths.
  """

  _layer_classes = {}

  def __init__(self, widths, widths_name, activation, time_conditioning, **kwargs):
    super().__init__(**kwargs)
    widths = tuple(int(w) for w in widths)
    if not widths or min(widths) < 1:
      raise ValueError(f"{widths_name} must be positive sizes; got {widths!r}.")
    checks.one_of("time_conditioning", time_conditioning, TIME_CONDITIONINGS)
    self.activation = activation
    self.time_conditioning = time_conditioning
    self._activation = keras.activations.get(activation)
    self._hidden = [self._make_layer(w, first=i == 0, name=f"hidden_{i}")
                    for i, w in enumerate(widths)]
    self._output = None

  def _make_layer(self, width, first, name, zero_init=False):
    # A concat-squash layer reads t in every layer; a concat net only in its first.
    where_time = {"with_time": first} if self.time_conditioning == "concat" else {}
    return self._layer_classes[self.time_conditioning](
        width, zero_init=zero_init, dtype=self.dtype_policy, name=name, **where_time)

  def build(self, input_shape):
    self._output = self._make_layer(input_shape[-1], first=False, name="output",
                                    zero_init=True)
    shape = tuple(input_shape)
    for layer in self._hidden:
      layer.build(shape)
      shape = tuple(layer.compute_output_shape(shape))
    self._output.build(shape)

  def call(self, z, t):
    h = z
    for layer in self._hidden:
      h = self._activation(layer(h, t))
    return self._output(h, t)

  @property
  def supports_tangents(self):
    """Whether `call_with_tangents` works: the activation has a closed-form derivative."""
    return (isinstance(self.activation, str) and self.activation in _ACTIVATION_DERIVATIVES
            and self.compute_dtype == self.variable_dtype)

  def call_with_tangents(self, z, t, tangents):
    """`(call(z, t), J v)` for the stacked tangents `v` `[K, B, *event]` (forward mode).

    Costs one pass of the net plus K linear passes of the kernels (no backward pass).
    """
    if not self.supports_tangents:
      raise ValueError(
          f"{type(self).__name__} computes forward-mode products only for the activations "
          f"{sorted(_ACTIVATION_DERIVATIVES)} and without mixed precision; got activation "
          f"{self.activation!r}, dtype policy {self.dtype_policy.name!r}. Use one of them, "
          "or let the continuous flow use reverse-mode autodiff (no jvp_fn).")
    if not self.built:
      self.build(tuple(z.shape))
    dtype = self.compute_dtype
    h, v = ops.cast(z, dtype), ops.cast(tangents, dtype)
    activation = _ACTIVATION_DERIVATIVES[self.activation]
    for layer in self._hidden:
      pre, v = layer.call_with_tangents(h, t, v)
      h, slope = activation(pre)
      v = v * slope
    return self._output.call_with_tangents(h, t, v)


@keras.saving.register_keras_serializable(package="tfp_flows")
class TimeConditionedMLP(_TimeConditionedNet):
  """Vector field `f(t, z)` on `[B, D]`: a time-conditioned MLP, zero output at init.

  `call(z, t)` with `t` a scalar or `[B]`. Smooth activations (softplus, tanh) keep the
  field Lipschitz and differentiable, which the ODE solver and the trace need; the
  zero-initialised last layer makes the flow start as the identity.

  Args:
    hidden_units: hidden sizes.
    activation: hidden activation (a smooth one).
    time_conditioning: "concat_squash" (`time_layers.ConcatSquashDense`) or "concat"
      (an MLP on `[z, t]`, `time_layers.TimeConcatDense`).
  """

  _layer_classes = {"concat_squash": time_layers.ConcatSquashDense,
                    "concat": time_layers.TimeConcatDense}

  def __init__(self, hidden_units=(64, 64, 64), activation="softplus",
               time_conditioning="concat_squash", **kwargs):
    super().__init__(hidden_units, "hidden_units", activation, time_conditioning, **kwargs)
    self.hidden_units = tuple(int(u) for u in hidden_units)

  def get_config(self):
    return {**super().get_config(), "hidden_units": list(self.hidden_units),
            "activation": self.activation, "time_conditioning": self.time_conditioning}


@keras.saving.register_keras_serializable(package="tfp_flows")
class TimeConditionedConvNet(_TimeConditionedNet):
  """Vector field `f(t, z)` on images `[B, H, W, C]`: time-conditioned 3x3 convolutions.

  Args:
    hidden_channels: channels of the hidden convolutions.
    activation: hidden activation (a smooth one).
    time_conditioning: "concat_squash" (`time_layers.ConcatSquashConv2D`) or "concat"
      (t as an extra input channel, `time_layers.TimeConcatConv2D`).
  """

  _layer_classes = {"concat_squash": time_layers.ConcatSquashConv2D,
                    "concat": time_layers.TimeConcatConv2D}

  def __init__(self, hidden_channels=(64, 64, 64), activation="softplus",
               time_conditioning="concat_squash", **kwargs):
    super().__init__(hidden_channels, "hidden_channels", activation, time_conditioning,
                     **kwargs)
    self.hidden_channels = tuple(int(c) for c in hidden_channels)

  def get_config(self):
    return {**super().get_config(), "hidden_channels": list(self.hidden_channels),
            "activation": self.activation, "time_conditioning": self.time_conditioning}
