"""Keras layer: L [rotation, half coupling] blocks with stacked MLP weights, run as one loop."""

import keras

from tfp_flows.bijectors import coupling_scan
from tfp_flows.layers import flow_layer
from tfp_flows.layers import transformer_spec
from tfp_flows.nets import mlp
from tfp_flows.numerics import checks

__all__ = ["CouplingScan"]


@keras.saving.register_keras_serializable(package="tfp_flows")
class CouplingScan(flow_layer.FlowLayer):
  """Owns the stacked conditioner weights of a `tfp_flows.bijectors.CouplingScan`.

  The transform of `num_blocks` blocks of `[Permute(half_rotation(D)),
  Coupling(transformer, hidden_units=...)]` over vectors `[D]` (the couplings moving the
  second half), with each weight of the blocks' MLP conditioners stacked on a leading
  axis of length L. With `k = D // 2` and `R(x) = [x_k, ..., x_{D-1}, x_0, ..., x_{k-1}]`:

  ```none
  inverse (data -> base):  z = x;  for j = 0 .. L-1:  z = C_j^{-1}(R z)
  forward (base -> data):  x = z;  for j = L-1 .. 0:  x = R^{-1} C_j(x)
  C_j:  y_a = x_a,  y_b = T(x_b; MLP_j(x_a [, context])),  log|det| = sum log T'
  ```

  See `tfp_flows.bijectors.CouplingScan` for why a rotation.

  The blocks run as one `tf.while_loop`, so a training step traces and compiles one
  block rather than L and the optimizer updates one variable per MLP layer rather than
  L: the first XLA step of an 8-block, 64-D spline flow takes about 60% of the time, while
  a step runs 15-30% slower (benchmarks/RESULTS.md, "tenth pass"). Each MLP layer
  `l` holds `W_l` of shape `[L, fan_in + 1, units]` (`tfp_flows.nets.MLP`'s stacked
  layout, block by block); Glorot-uniform kernels, zero biases and a zero last layer,
  so the layer starts as the identity.

  Args:
    num_blocks: L >= 1.
    transformer: the elementwise transformer: a `tfp_flows.bijectors.Transformer`, a
      name or `{"name": ..., "config": {...}}` (see `tfp_flows.layers.transformer_spec`).
    hidden_units: the MLP conditioners' hidden sizes.
    activation: the MLPs' hidden activation.
    **kwargs: `FlowLayer` arguments (`conditional`, `name`, `dtype`).

  Raises:
    ValueError: for `num_blocks` < 1, or (at build) inputs that are not vectors of at
      least 2 entries.
  """

  def __init__(self, num_blocks, transformer="rational_quadratic", hidden_units=(128, 128),
               activation="relu", **kwargs):
    super().__init__(**kwargs)
    if not checks.is_int_at_least(num_blocks, 1):
      raise ValueError(f"num_blocks must be an integer >= 1; got {num_blocks!r}.")
    self.num_blocks = int(num_blocks)
    self.transformer = transformer_spec.get(transformer)
    self.hidden_units = tuple(int(u) for u in hidden_units)
    self.activation = activation
    self._activation = keras.activations.get(activation)

  def build(self, inputs_shape, context_shape=None):
    """Creates the stacked weights for inputs `[N, D]` (and a context `[N, C]`).

    Built without a context shape (as `FlowModel`'s constructor builds it), a
    conditional layer creates its weights on the first call with a context.
    """
    if len(inputs_shape) != 2 or inputs_shape[-1] is None or int(inputs_shape[-1]) < 2:
      raise ValueError("CouplingScan takes vectors [N, D] with D >= 2; got input shape "
                       f"{tuple(inputs_shape)}.")
    self._num_channels = int(inputs_shape[-1])
    kept = self._num_channels // 2
    self.net = _StackedMLPWeights(
        self.num_blocks, (self._num_channels - kept) * self.transformer.num_params,
        self.hidden_units, dtype=self.dtype_policy, name="conditioner")
    if not self.conditional or context_shape is not None:
      self.net.build((None, kept + (0 if context_shape is None else int(context_shape[-1]))))
    super().build(inputs_shape, context_shape)

  def _conditioner(self, x_a, weights, context=None):
    if context is not None:
      x_a = keras.ops.concatenate([x_a, keras.ops.cast(context, x_a.dtype)], axis=-1)
    return mlp.apply_layers(x_a, weights, self._activation)

  def make_bijector(self):
    return coupling_scan.CouplingScan(
        self._conditioner, self.transformer, num_channels=self._num_channels,
        block_weights=lambda: [w.value for w in self.net.layer_weights],
        num_blocks=self.num_blocks, conditional=self.conditional,
        dtype=self.compute_dtype, name=self.bijector_name())

  def call(self, inputs, context=None, training=None):
    if not self.net.built:
      if context is None:
        raise ValueError(f"{self.name} is conditional: call it with a context.")
      self.net.build((None, self._num_channels // 2 + int(context.shape[-1])))
    return super().call(inputs, context=context, training=training)

  def get_config(self):
    return {**super().get_config(), "num_blocks": self.num_blocks,
            "transformer": transformer_spec.serialize(self.transformer),
            "hidden_units": list(self.hidden_units), "activation": self.activation}


class _StackedMLPWeights(keras.layers.Layer):
  """The weights of L MLPs, each `[L, fan_in + 1, units]` (`tfp_flows.nets.MLP`'s stacked
  layout with a leading block axis); built on `(None, fan_in)`."""

  def __init__(self, num_blocks, output_units, hidden_units, **kwargs):
    super().__init__(**kwargs)
    self.num_blocks = num_blocks
    self.output_units = output_units
    self.hidden_units = hidden_units

  def build(self, inputs_shape):
    self.layer_weights = mlp.add_layer_weights(self, int(inputs_shape[-1]), self.hidden_units,
                                               self.output_units, copies=self.num_blocks)
