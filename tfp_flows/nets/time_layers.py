"""The layers of time-conditioned vector fields: how t enters a dense or conv layer.

"concat_squash" layers (FFJORD's default) gate and shift every output by t;
"concat" layers take t as one more input (on the first layer of a net only). Each
layer is linear in z before its time gate (or none), so besides `call(z, t)` it gives
`call_with_tangents(z, t, tangents)`: its output and each tangent through the same
kernel, without bias or time shift, times the gate (see `time_conditioned`, which
stacks them into nets).
"""

import keras
from keras import ops

__all__ = ["ConcatSquashDense", "ConcatSquashConv2D", "TimeConcatDense", "TimeConcatConv2D"]


def _column(t, like):
  """Time as a `[B, 1]` column (a scalar time is broadcast over the batch)."""
  t = ops.cast(t, like.dtype)
  if len(t.shape) == 0:
    return ops.ones_like(like[:, :1]) * t
  return ops.reshape(t, [-1, 1])


def _conv_sizes(filters, kernel_size):
  """`(filters, kernel_size)` as ints, or a ValueError when either is not positive."""
  if int(filters) < 1 or int(kernel_size) < 1:
    raise ValueError(f"filters and kernel_size must be positive; got {filters!r}, "
                     f"{kernel_size!r}.")
  return int(filters), int(kernel_size)


def _add_time_weights(layer, units):
  """A concat-squash layer's time weights g, c and h (after its kernel and bias, the
  order its saved files hold them in); h starts at zero with `zero_init`."""
  layer.gate_kernel = layer.add_weight(shape=(1, units), initializer="glorot_uniform",
                                       name="gate_kernel")
  layer.gate_bias = layer.add_weight(shape=(units,), initializer="zeros", name="gate_bias")
  layer.time_bias = layer.add_weight(
      shape=(1, units), initializer="zeros" if layer.zero_init else "glorot_uniform",
      name="time_bias")


def _gate_and_shift(layer, t):
  """`sigmoid(t g + c)` and `t h` per row, `[B, units]`, from the time column `t` `[B, 1]`.

  `g` and `h` are `[1, units]`, so `t g` is an outer product: written as a broadcast
  product rather than a matmul with an inner dimension of 1. The result is the same,
  but the gradients differ in cost: a matmul's kernel gradient is `t^T dY`, which XLA
  on CPU fuses with its elementwise producers into a loop over the batch that ran about
  7x slower than the column sum the broadcast product's gradient is (measured in the
  adjoint solve of `benchmarks/ffjord_cost.py`, where these gradients are taken at
  every field evaluation).
  """
  gate = ops.sigmoid(t * layer.gate_kernel + layer.gate_bias)
  return gate, t * layer.time_bias


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
    _add_time_weights(self, self.units)

  def call(self, z, t):
    gate, shift = _gate_and_shift(self, _column(t, z))
    return (ops.matmul(z, self.kernel) + self.bias) * gate + shift

  def call_with_tangents(self, z, t, tangents):
    """`call(z, t)` and its Jacobian-vector products `(W v) * gate`, `tangents [K, B, D]`."""
    gate, shift = _gate_and_shift(self, _column(t, z))
    out = (ops.matmul(z, self.kernel) + self.bias) * gate + shift
    num = ops.shape(tangents)[0]
    flat = ops.reshape(tangents, (-1, ops.shape(tangents)[-1]))
    moved = ops.reshape(ops.matmul(flat, self.kernel), (num, -1, self.units))
    return out, moved * gate

  def compute_output_shape(self, input_shape, t_shape=None):
    return (*input_shape[:-1], self.units)

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
    self.filters, self.kernel_size = _conv_sizes(filters, kernel_size)
    self.zero_init = bool(zero_init)

  def build(self, input_shape):
    init = "zeros" if self.zero_init else "glorot_uniform"
    self.kernel = self.add_weight(
        shape=(self.kernel_size, self.kernel_size, input_shape[-1], self.filters),
        initializer=init, name="kernel")
    self.bias = self.add_weight(shape=(self.filters,), initializer="zeros", name="bias")
    _add_time_weights(self, self.filters)

  def call(self, z, t):
    gate, shift = _gate_and_shift(self, _column(t, z[:, 0, 0, :]))
    out = ops.conv(z, self.kernel, padding="same") + self.bias
    return out * gate[:, None, None, :] + shift[:, None, None, :]

  def call_with_tangents(self, z, t, tangents):
    """`call(z, t)` and its products `conv(v) * gate`, `tangents [K, B, H, W, C]`."""
    gate, shift = _gate_and_shift(self, _column(t, z[:, 0, 0, :]))
    gate = gate[:, None, None, :]
    out = (ops.conv(z, self.kernel, padding="same") + self.bias) * gate
    shape = ops.shape(tangents)
    flat = ops.reshape(tangents, (-1,) + tuple(shape[2:]))
    moved = ops.conv(flat, self.kernel, padding="same")
    moved = ops.reshape(moved, (shape[0], -1) + tuple(ops.shape(moved)[1:]))
    return out + shift[:, None, None, :], moved * gate

  def compute_output_shape(self, input_shape, t_shape=None):
    return (*input_shape[:-1], self.filters)

  def get_config(self):
    return {**super().get_config(), "filters": self.filters,
            "kernel_size": self.kernel_size, "zero_init": self.zero_init}


@keras.saving.register_keras_serializable(package="tfp_flows")
class TimeConcatDense(keras.layers.Layer):
  """`W [z, t] + b` (with `with_time`) or `W z + b`: a dense layer, time as an input.

  With time the kernel is `[D + 1, units]`, its last row the time's: the first layer
  of an MLP on `[z, t]`. The time row is applied as a broadcast product `t w_t`
  rather than through a concatenation (see `_gate_and_shift` for why). With
  `zero_init` the output is exactly 0.

  Args:
    units: output size.
    with_time: whether t is an input.
    zero_init: start W and b at zero.
  """

  def __init__(self, units, with_time=False, zero_init=False, **kwargs):
    super().__init__(**kwargs)
    if int(units) < 1:
      raise ValueError(f"units must be positive; got {units!r}.")
    self.units = int(units)
    self.with_time = bool(with_time)
    self.zero_init = bool(zero_init)

  def build(self, input_shape):
    self.kernel = self.add_weight(
        shape=(input_shape[-1] + int(self.with_time), self.units),
        initializer="zeros" if self.zero_init else "glorot_uniform", name="kernel")
    self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

  def _linear(self, z):
    return ops.matmul(z, self.kernel[:ops.shape(z)[-1]])

  def call(self, z, t):
    out = self._linear(z) + self.bias
    if self.with_time:
      out = out + _column(t, z) * self.kernel[-1:]
    return out

  def call_with_tangents(self, z, t, tangents):
    """`call(z, t)` and its Jacobian-vector products `W_z v`, `tangents [K, B, D]`."""
    num = ops.shape(tangents)[0]
    flat = ops.reshape(tangents, (-1, ops.shape(tangents)[-1]))
    return self.call(z, t), ops.reshape(self._linear(flat), (num, -1, self.units))

  def compute_output_shape(self, input_shape, t_shape=None):
    return (*input_shape[:-1], self.units)

  def get_config(self):
    return {**super().get_config(), "units": self.units, "with_time": self.with_time,
            "zero_init": self.zero_init}


@keras.saving.register_keras_serializable(package="tfp_flows")
class TimeConcatConv2D(keras.layers.Layer):
  """`conv([z, t 1]) + b` (with `with_time`) or `conv(z) + b`: t as an input channel.

  With time the kernel has `C + 1` input channels, the last one convolving a constant
  plane of t ("same" zero padding included, as a concatenated channel would).

  Args:
    filters: output channels.
    kernel_size: square kernel size ("same" padding, stride 1).
    with_time: whether t is an input channel.
    zero_init: start the kernel and bias at zero.
  """

  def __init__(self, filters, kernel_size=3, with_time=False, zero_init=False, **kwargs):
    super().__init__(**kwargs)
    self.filters, self.kernel_size = _conv_sizes(filters, kernel_size)
    self.with_time = bool(with_time)
    self.zero_init = bool(zero_init)

  def build(self, input_shape):
    self.kernel = self.add_weight(
        shape=(self.kernel_size, self.kernel_size, input_shape[-1] + int(self.with_time),
               self.filters),
        initializer="zeros" if self.zero_init else "glorot_uniform", name="kernel")
    self.bias = self.add_weight(shape=(self.filters,), initializer="zeros", name="bias")

  def call(self, z, t):
    if self.with_time:
      plane = ops.ones_like(z[..., :1]) * ops.reshape(_column(t, z[:, 0, 0, :]),
                                                      (-1, 1, 1, 1))
      z = ops.concatenate([z, plane], axis=-1)
    return ops.conv(z, self.kernel, padding="same") + self.bias

  def call_with_tangents(self, z, t, tangents):
    """`call(z, t)` and its products `conv_z(v)`, `tangents [K, B, H, W, C]`."""
    shape = ops.shape(tangents)
    flat = ops.reshape(tangents, (-1,) + tuple(shape[2:]))
    moved = ops.conv(flat, self.kernel[:, :, :shape[-1]], padding="same")
    moved = ops.reshape(moved, (shape[0], -1) + tuple(ops.shape(moved)[1:]))
    return self.call(z, t), moved

  def compute_output_shape(self, input_shape, t_shape=None):
    return (*input_shape[:-1], self.filters)

  def get_config(self):
    return {**super().get_config(), "filters": self.filters,
            "kernel_size": self.kernel_size, "with_time": self.with_time,
            "zero_init": self.zero_init}
