"""A dense conditioner network whose last layer starts at zero."""

import math

import keras

__all__ = ["MLP", "add_layer_weights", "apply_layers"]

_LAYOUTS = ("stacked", "dense")


@keras.saving.register_keras_serializable(package="tfp_flows")
class MLP(keras.layers.Layer):
  """Dense network `x (+ context) -> hidden -> ... -> output_units`, zero-initialised output.

  The zero last layer makes a coupling or autoregressive flow start as the identity
  (every transformer here is the identity at all-zero parameters). A context, when
  given, is concatenated to the input.

  #### Mathematical Details

  Layer `l` maps `h_{l-1}` of width `n` to `h_l = act(h_{l-1} K_l + b_l)` (no
  activation on the last layer). With `layout="stacked"` each layer holds one weight
  `W_l = [K_l; b_l]` of shape `[n + 1, units]`, the bias as its last row, and computes
  `[h_{l-1}, 1] W_l`: one matmul, whose gradient `[h_{l-1}, 1]^T g` gives the kernel's and
  the bias' gradients together. Kernels start Glorot-uniform and biases at zero, the
  last layer all zero, as with `layout="dense"`, where each layer is a Keras `Dense`
  with a kernel and a bias.

  Both layouts compute the same function of the same parameters. The stacked one has
  half the variables, which halves what an optimizer traces and compiles per step (the
  Keras optimizers trace their update once per variable), and skips Keras' per-layer
  call: a flow of 8 couplings with 3-layer MLPs compiles its first XLA training step
  about 1 s faster (benchmarks/RESULTS.md). What an optimizer does per variable sees a
  layer's kernel and bias as one there: `clipnorm` clips their joint norm, and a weight
  decay cannot exclude the biases by name; `layout="dense"` keeps them apart.

  Args:
    output_units: size of the output.
    hidden_units: sizes of the hidden layers (may be empty: an affine map).
    activation: activation of the hidden layers.
    layout: "stacked" (one `[fan_in + 1, units]` weight per layer) or "dense" (Keras
      `Dense` sublayers: the layout of files written before the stacked one existed,
      which a config without `layout` loads with).
    **kwargs: `keras.layers.Layer` arguments (`name`, `dtype="float64"`, ...).

  Raises:
    ValueError: for a non-positive `output_units` or an unknown `layout`.
  """

  def __init__(self, output_units, hidden_units=(128, 128), activation="relu",
               layout="stacked", **kwargs):
    super().__init__(**kwargs)
    if int(output_units) < 1:
      raise ValueError(f"output_units must be positive; got {output_units!r}.")
    if layout not in _LAYOUTS:
      raise ValueError(f"layout must be one of {_LAYOUTS}; got {layout!r}.")
    self.output_units = int(output_units)
    self.hidden_units = tuple(int(u) for u in hidden_units)
    self.activation = activation
    self.layout = layout
    self._activation = keras.activations.get(activation)
    if layout == "dense":
      # Every sublayer computes in this layer's dtype policy (float64, say), not the
      # global one. The attribute names are the paths older files hold the weights under.
      self._hidden = [keras.layers.Dense(u, activation=activation, dtype=self.dtype_policy,
                                         name=f"dense_{i}")
                      for i, u in enumerate(self.hidden_units)]
      self._output = keras.layers.Dense(self.output_units, kernel_initializer="zeros",
                                        bias_initializer="zeros", dtype=self.dtype_policy,
                                        name="output")

  def build(self, inputs_shape, context_shape=None):
    """Creates every weight now, so a `.keras` reload finds them.

    The first layer's input width is `inputs_shape[-1]`, plus `context_shape[-1]` when a
    context is concatenated.
    """
    width = int(inputs_shape[-1])
    if context_shape is not None:
      width += int(context_shape[-1])
    if self.layout == "dense":
      shape = (None, width)
      for layer in self._hidden + [self._output]:
        layer.build(shape)
        shape = (None, layer.units)
      return
    self._layer_weights = add_layer_weights(self, width, self.hidden_units,
                                            self.output_units)

  def call(self, inputs, context=None):
    # As Keras' Dense computes: in the layer's compute dtype, whatever the inputs' (ints,
    # or float64 with autocast=False), and the context's.
    h = keras.ops.cast(inputs, self.compute_dtype)
    if context is not None:
      h = keras.ops.concatenate([h, keras.ops.cast(context, self.compute_dtype)], axis=-1)
    if self.layout == "dense":
      for layer in self._hidden:
        h = layer(h)
      return self._output(h)
    return apply_layers(h, self._layer_weights, self._activation)

  def get_config(self):
    return {**super().get_config(), "output_units": self.output_units,
            "hidden_units": list(self.hidden_units), "activation": self.activation,
            "layout": self.layout}

  @classmethod
  def from_config(cls, config):
    return super().from_config({"layout": "dense", **config})


def apply_layers(h, layer_weights, activation):
  """`h_l = act(h_{l-1} K_l + b_l)` as `[h_{l-1}, 1] W_l`, no activation after the last layer.

  Args:
    h: `[N, fan_in]` input.
    layer_weights: the stacked `[fan_in + 1, units]` weights `W_l = [K_l; b_l]`.
    activation: callable applied between layers.
  """
  ones = keras.ops.ones_like(h[..., :1])
  for i, weight in enumerate(layer_weights):
    if i:
      h = activation(h)
    h = keras.ops.matmul(keras.ops.concatenate([h, ones], axis=-1),
                         keras.ops.cast(weight, h.dtype))
  return h


def add_layer_weights(layer, fan_in, hidden_units, output_units, copies=None):
  """Adds the stacked weights `layer_0, layer_1, ...` of an MLP to `layer`; returns them.

  Each is `[n + 1, units]` (`[K; b]`, n the layer's input width), or `[copies, n + 1,
  units]` for `copies` MLPs side by side; Glorot-uniform kernels, zero biases, and the
  last layer all zero.
  """
  widths = (int(fan_in),) + tuple(hidden_units)
  sizes = tuple(hidden_units) + (int(output_units),)
  weights = []
  for i, (width, units) in enumerate(zip(widths, sizes)):
    shape = (width + 1, units) if copies is None else (copies, width + 1, units)
    initializer = ("zeros" if i == len(sizes) - 1
                   else _kernel_over_zero_bias(width, units, copies))
    weights.append(layer.add_weight(shape, initializer, name=f"layer_{i}"))
  return weights


def _kernel_over_zero_bias(fan_in, units, copies=None):
  """Initializer of a stacked `[fan_in + 1, units]` weight: a Glorot-uniform kernel, zero bias.

  With `copies=L` it initialises `[L, fan_in + 1, units]`: L independent draws, from
  U(-l, l) with Glorot's `l = sqrt(6 / (fan_in + units))`, in one call (an initializer
  instance called twice draws the same values).
  """
  if copies is None:
    kernel = keras.initializers.GlorotUniform()
    kernel_shape, bias_shape = (fan_in, units), (1, units)
  else:
    limit = math.sqrt(6.0 / (fan_in + units))
    kernel = keras.initializers.RandomUniform(-limit, limit)
    kernel_shape, bias_shape = (copies, fan_in, units), (copies, 1, units)

  def initialize(shape, dtype=None):
    del shape
    return keras.ops.concatenate([kernel(kernel_shape, dtype),
                                  keras.ops.zeros(bias_shape, dtype)], axis=-2)

  return initialize
