"""Time-conditioned vector fields `f(t, z)` for continuous flows (concat-squash layers)."""

import keras
from keras import ops

__all__ = ["ConcatSquashDense", "ConcatSquashConv2D", "TimeConditionedMLP",
           "TimeConditionedConvNet"]


def _column(t, like):
  """Time as a `[B, 1]` column (a scalar time is broadcast over the batch)."""
  t = ops.cast(t, like.dtype)
  if len(t.shape) == 0:
    return ops.ones_like(like[:, :1]) * t
  return ops.reshape(t, [-1, 1])


@keras.saving.register_keras_serializable(package="tfp_flows")
class ConcatSquashDense(keras.layers.Layer):
  """`(W z + b) * sigmoid(t g + c) + t h`: a dense layer gated and shifted by time.

  The concat-squash layer of FFJORD (Grathwohl et al. 2019): time enters as a
  per-unit multiplicative gate and an additive bias, so the field can change smoothly
  with t at the cost of 3 extra vectors. With `zero_init` the output is exactly 0.

  Args:
    units: output size.
    zero_init: start W, b and h at zero (a zero vector field: the identity flow).
  """

  def __init__(self, units, zero_init=False, **kwargs):
    super().__init__(**kwargs)
    if int(units) < 1:
      raise ValueError(f"units must be positive; got {units!r}.")
    self.units = int(units)
    self.zero_init = bool(zero_init)

  def build(self, input_shape):
    init = "zeros" if self.zero_init else "glorot_uniform"
    self.kernel = self.add_weight(shape=(input_shape[-1], self.units), initializer=init,
                                  name="kernel")
    self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")
    self.gate_kernel = self.add_weight(shape=(1, self.units), initializer="glorot_uniform",
                                       name="gate_kernel")
    self.gate_bias = self.add_weight(shape=(self.units,), initializer="zeros",
                                     name="gate_bias")
    self.time_bias = self.add_weight(shape=(1, self.units),
                                     initializer="zeros" if self.zero_init else
                                     "glorot_uniform", name="time_bias")

  def call(self, z, t):
    t = _column(t, z)
    gate = ops.sigmoid(ops.matmul(t, self.gate_kernel) + self.gate_bias)
    return (ops.matmul(z, self.kernel) + self.bias) * gate + ops.matmul(t, self.time_bias)

  def get_config(self):
    return {**super().get_config(), "units": self.units, "zero_init": self.zero_init}


@keras.saving.register_keras_serializable(package="tfp_flows")
class ConcatSquashConv2D(keras.layers.Layer):
  """`conv(z) * sigmoid(t g + c) + t h` per output channel: a time-gated 2-D convolution.

  Args:
    filters: output channels.
    kernel_size: square kernel size ("same" padding, stride 1).
    zero_init: start the kernel, bias and time bias at zero.
  """

  def __init__(self, filters, kernel_size=3, zero_init=False, **kwargs):
    super().__init__(**kwargs)
    if int(filters) < 1 or int(kernel_size) < 1:
      raise ValueError(f"filters and kernel_size must be positive; got {filters!r}, "
                       f"{kernel_size!r}.")
    self.filters = int(filters)
    self.kernel_size = int(kernel_size)
    self.zero_init = bool(zero_init)

  def build(self, input_shape):
    init = "zeros" if self.zero_init else "glorot_uniform"
    self.kernel = self.add_weight(
        shape=(self.kernel_size, self.kernel_size, input_shape[-1], self.filters),
        initializer=init, name="kernel")
    self.bias = self.add_weight(shape=(self.filters,), initializer="zeros", name="bias")
    self.gate_kernel = self.add_weight(shape=(1, self.filters),
                                       initializer="glorot_uniform", name="gate_kernel")
    self.gate_bias = self.add_weight(shape=(self.filters,), initializer="zeros",
                                     name="gate_bias")
    self.time_bias = self.add_weight(shape=(1, self.filters),
                                     initializer="zeros" if self.zero_init else
                                     "glorot_uniform", name="time_bias")

  def call(self, z, t):
    t = _column(t, z[:, 0, 0, :])
    gate = ops.sigmoid(ops.matmul(t, self.gate_kernel) + self.gate_bias)
    shift = ops.matmul(t, self.time_bias)
    out = ops.conv(z, self.kernel, padding="same") + self.bias
    return out * gate[:, None, None, :] + shift[:, None, None, :]

  def get_config(self):
    return {**super().get_config(), "filters": self.filters,
            "kernel_size": self.kernel_size, "zero_init": self.zero_init}


@keras.saving.register_keras_serializable(package="tfp_flows")
class TimeConditionedMLP(keras.layers.Layer):
  """Vector field `f(t, z)` on `[B, D]`: concat-squash dense layers, zero output at init.

  `call(z, t)` with `t` a scalar or `[B]`. Smooth activations (softplus, tanh) keep the
  field Lipschitz and differentiable, which the ODE solver and the trace need; the
  zero-initialised last layer makes the flow start as the identity.

  Args:
    hidden_units: hidden sizes.
    activation: hidden activation (a smooth one).
  """

  def __init__(self, hidden_units=(64, 64, 64), activation="softplus", **kwargs):
    super().__init__(**kwargs)
    self.hidden_units = tuple(int(u) for u in hidden_units)
    if not self.hidden_units or min(self.hidden_units) < 1:
      raise ValueError(f"hidden_units must be positive sizes; got {hidden_units!r}.")
    self.activation = activation
    self._activation = keras.activations.get(activation)
    self._hidden = [ConcatSquashDense(u, name=f"hidden_{i}")
                    for i, u in enumerate(self.hidden_units)]
    self._output = None

  def build(self, input_shape):
    self._output = ConcatSquashDense(input_shape[-1], zero_init=True, name="output")
    shape = tuple(input_shape)
    for layer in self._hidden:
      layer.build(shape)
      shape = shape[:-1] + (layer.units,)
    self._output.build(shape)

  def call(self, z, t):
    h = z
    for layer in self._hidden:
      h = self._activation(layer(h, t))
    return self._output(h, t)

  def get_config(self):
    return {**super().get_config(), "hidden_units": list(self.hidden_units),
            "activation": self.activation}


@keras.saving.register_keras_serializable(package="tfp_flows")
class TimeConditionedConvNet(keras.layers.Layer):
  """Vector field `f(t, z)` on images `[B, H, W, C]`: concat-squash 3x3 convolutions.

  Args:
    hidden_channels: channels of the hidden convolutions.
    activation: hidden activation (a smooth one).
  """

  def __init__(self, hidden_channels=(64, 64, 64), activation="softplus", **kwargs):
    super().__init__(**kwargs)
    self.hidden_channels = tuple(int(c) for c in hidden_channels)
    if not self.hidden_channels or min(self.hidden_channels) < 1:
      raise ValueError(f"hidden_channels must be positive sizes; got {hidden_channels!r}.")
    self.activation = activation
    self._activation = keras.activations.get(activation)
    self._hidden = [ConcatSquashConv2D(c, name=f"hidden_{i}")
                    for i, c in enumerate(self.hidden_channels)]
    self._output = None

  def build(self, input_shape):
    self._output = ConcatSquashConv2D(input_shape[-1], zero_init=True, name="output")
    shape = tuple(input_shape)
    for layer in self._hidden:
      layer.build(shape)
      shape = shape[:-1] + (layer.filters,)
    self._output.build(shape)

  def call(self, z, t):
    h = z
    for layer in self._hidden:
      h = self._activation(layer(h, t))
    return self._output(h, t)

  def get_config(self):
    return {**super().get_config(), "hidden_channels": list(self.hidden_channels),
            "activation": self.activation}
