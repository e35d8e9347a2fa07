"""MADE: a masked dense network whose outputs are autoregressive in its inputs."""

import numbers

import keras
import numpy as np

__all__ = ["MADE"]

_ORDERS = ("natural", "reversed", "random")


def _positive_int(name, value):
  """`value` as an int, or a ValueError quoting it (bools and 2.5 are not sizes)."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
    raise ValueError(f"{name} must be a positive int; got {value!r}.")
  return int(value)


def _resolve_order(order, event_size, seed):
  """The position of each input in the ordering, as a list of ints (see `MADE.order`)."""
  if isinstance(order, str):
    if order == "natural":
      return list(range(event_size))
    if order == "reversed":
      return list(range(event_size - 1, -1, -1))
    if order == "random":
      return [int(p) for p in np.random.default_rng(seed).permutation(event_size)]
    raise ValueError(f"order must be one of {_ORDERS} or a permutation of "
                     f"range(event_size); got {order!r}.")
  values = np.asarray(order)
  if (values.ndim != 1 or values.dtype.kind not in "iu"
      or sorted(values.tolist()) != list(range(event_size))):
    raise ValueError(f"An explicit order must be a permutation of range({event_size}) "
                     f"(event_size); got {order!r}.")
  return [int(p) for p in values]


def _hidden_degrees(num_units, low, high):
  """`num_units` degrees spread evenly (sorted) over `low..high`, deterministically.

  Each degree gets floor or ceil of `num_units / (high - low + 1)` units, the same counts
  as cycling over the degrees (Germain et al., Sec. 4), but with fewer units than
  degrees they are spread over the whole range rather than bunched at `low`.
  """
  return low + (np.arange(num_units) * (high - low + 1)) // num_units


@keras.saving.register_keras_serializable(package="tfp_flows")
class MADE(keras.layers.Layer):
  """Masked autoencoder for distribution estimation, the conditioner of autoregressive flows.

  `x [..., D] (, context [..., C]) -> h [..., D, params_per_dim]` where row `h[..., i, :]`
  depends only on the inputs `x[..., j]` with `order[j] < order[i]` (strictly before `i`
  in the ordering) and on the whole context. The output layer (kernel and bias) starts
  at zero, so `h == 0` at initialisation and the flow built on it starts as the identity.

  #### Mathematical Details

  Each input `k` gets the degree `m(k) = order[k] + 1` in `1..D`; each hidden unit a
  degree in `1..D-1` (in `0..D-1` with a context: degree-0 units see only the context),
  spread evenly and deterministically. Masked dense layers

  ```none
  hidden l:  h_l = act((W_l * M_l) h_{l-1} + b_l + U_l c),  M_l[a, b] = m_{l-1}(a) <= m_l(b)
  output:    h   = (V * M_V) h_L + b_V + U_V c,            M_V[a, i] = m_L(a) < m(i)
  ```

  (`*` is elementwise; `M_V` is repeated for the `params_per_dim` outputs of each `i`)
  compose into paths from `x_j` to `h_i` only through degrees `m(j) <= ... < m(i)`
  (Germain et al., eq. 13 and 14). The context kernels `U` are unmasked: the context is
  not part of the autoregressive vector. The output `U_V` starts at zero like `V`.

  With `event_size == 1` no input precedes the only output: it depends on the bias and
  the context alone. A hidden layer narrower than `D - 1` is allowed; it just leaves some
  dependencies out. Masks are constants rebuilt from the config in `build` (they are not
  saved weights), so a `.keras` reload reproduces them exactly. Cost per call: one
  elementwise mask product per kernel plus the dense matmuls, no Python loop over data.

  #### References

  [1]: Germain, Gregor, Murray, Larochelle. MADE: Masked Autoencoder for Distribution
       Estimation. https://arxiv.org/abs/1502.03509

  Args:
    event_size: `D`, the size of the autoregressive input.
    params_per_dim: `P`, the number of outputs per input dimension.
    hidden_units: sizes of the hidden layers (may be empty: a masked linear map).
    activation: activation of the hidden layers.
    order: "natural" (`0..D-1`), "reversed", "random" (a permutation drawn with numpy
      from `seed` at construction; the config saves the permutation, not the seed's
      draw) or an explicit permutation of `range(D)` in the layout of `MADE.order`.
    seed: seed of the random order (None: fresh entropy, still saved in the config).
    context_units: `C`, the size of the context; None infers it from the first call
      that passes a context (or means no context).
    **kwargs: `keras.layers.Layer` arguments (`name`, `dtype="float64"`, ...).

  Raises:
    ValueError: for non-positive sizes, an unknown order string or a non-permutation.
  """

  def __init__(self, event_size, params_per_dim, hidden_units=(128, 128), activation="relu",
               order="natural", seed=None, context_units=None, **kwargs):
    super().__init__(**kwargs)
    self.event_size = _positive_int("event_size", event_size)
    self.params_per_dim = _positive_int("params_per_dim", params_per_dim)
    if isinstance(hidden_units, (str, numbers.Number)):
      raise ValueError(f"hidden_units must be a sequence of positive ints; got "
                       f"{hidden_units!r}.")
    self.hidden_units = tuple(_positive_int("each of hidden_units", u)
                              for u in hidden_units)
    self.activation = activation
    self._activation = keras.activations.get(activation)
    self.seed = seed
    self.context_units = (None if context_units is None
                          else _positive_int("context_units", context_units))
    # Resolved now, not in build: a random order must be the same on every build and is
    # what the config saves.
    self._order = _resolve_order(order, self.event_size, seed)

  @property
  def order(self):
    """`order[k]` is the 0-based position of input `k` in the autoregressive ordering.

    Output row `i` depends on `x[j]` iff `order[j] < order[i]`. The input at position
    `p` is `numpy.argsort(order)[p]`; a sequential inverse fixes inputs in that order.
    """
    return list(self._order)

  def _masks(self):
    """The 0/1 masks of the hidden kernels and of the output kernel, as numpy arrays."""
    degrees = np.asarray(self._order) + 1
    # With a context, degree-0 units see only the context and feed every output, so even
    # the first output row is a nonlinear function of the context; with D == 1 and no
    # context no hidden unit can reach the output, so any degree will do.
    low = 0 if (self.context_units is not None or self.event_size == 1) else 1
    high = max(self.event_size - 1, low)
    masks = []
    previous = degrees
    for units in self.hidden_units:
      current = _hidden_degrees(units, low, high)
      masks.append((previous[:, None] <= current[None, :]).astype(np.float32))
      previous = current
    output = (previous[:, None] < degrees[None, :]).astype(np.float32)
    # Columns d * P .. d * P + P - 1 belong to input d, so a reshape to [..., D, P] works.
    masks.append(np.repeat(output, self.params_per_dim, axis=1))
    return masks

  def build(self, inputs_shape, context_shape=None):
    if inputs_shape[-1] != self.event_size:
      raise ValueError(f"MADE expects inputs [..., {self.event_size}] (event_size); got "
                       f"shape {tuple(inputs_shape)}.")
    if context_shape is not None:
      if context_shape[-1] is None:
        raise ValueError(f"The context needs a known last dimension; got shape "
                         f"{tuple(context_shape)}.")
      if self.context_units is None:
        self.context_units = int(context_shape[-1])
      elif context_shape[-1] != self.context_units:
        raise ValueError(f"MADE expects a context [..., {self.context_units}] "
                         f"(context_units); got shape {tuple(context_shape)}.")
    self._mask_values = tuple(self._masks())
    sizes = (self.event_size,) + self.hidden_units
    self._kernels, self._biases, self._context_kernels = [], [], []
    for i, units in enumerate(self.hidden_units):
      self._kernels.append(self.add_weight((sizes[i], units), "glorot_uniform",
                                           name=f"kernel_{i}"))
      self._biases.append(self.add_weight((units,), "zeros", name=f"bias_{i}"))
      if self.context_units is not None:
        self._context_kernels.append(self.add_weight(
            (self.context_units, units), "glorot_uniform", name=f"context_kernel_{i}"))
    out_units = self.event_size * self.params_per_dim
    self._kernels.append(self.add_weight((sizes[-1], out_units), "zeros",
                                         name="output_kernel"))
    self._biases.append(self.add_weight((out_units,), "zeros", name="output_bias"))
    if self.context_units is not None:
      self._context_kernels.append(self.add_weight(
          (self.context_units, out_units), "zeros", name="output_context_kernel"))

  def call(self, inputs, context=None):
    if (context is None) != (self.context_units is None):
      got = "none" if context is None else f"one of shape {tuple(context.shape)}"
      raise ValueError("MADE must be called with a context exactly when it has "
                       f"context_units (context_units={self.context_units}); got {got}.")
    ops = keras.ops
    dtype = self.compute_dtype
    h = ops.cast(inputs, dtype)
    if context is not None:
      context = ops.cast(context, dtype)
    num_layers = len(self._kernels)
    for i in range(num_layers):
      # The masks are numpy constants: in a graph or under XLA they fold into the program.
      mask = ops.convert_to_tensor(self._mask_values[i], dtype=dtype)
      h = ops.matmul(h, ops.cast(self._kernels[i], dtype) * mask)
      h = h + ops.cast(self._biases[i], dtype)
      if context is not None:
        h = h + ops.matmul(context, ops.cast(self._context_kernels[i], dtype))
      if i < num_layers - 1:
        h = self._activation(h)
    # Dynamic leading dims (unknown batch inside tf.function) come from ops.shape.
    return ops.reshape(h, (*ops.shape(h)[:-1], self.event_size, self.params_per_dim))

  def compute_output_shape(self, inputs_shape, context_shape=None):
    return (*inputs_shape[:-1], self.event_size, self.params_per_dim)

  def get_config(self):
    activation = (self.activation if isinstance(self.activation, str)
                  else keras.activations.serialize(self._activation))
    return {**super().get_config(), "event_size": self.event_size,
            "params_per_dim": self.params_per_dim, "hidden_units": list(self.hidden_units),
            "activation": activation, "order": self.order, "seed": self.seed,
            "context_units": self.context_units}
