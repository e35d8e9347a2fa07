"""A dense conditioner network whose last layer starts at zero."""

import keras

__all__ = ["MLP"]


@keras.saving.register_keras_serializable(package="tfp_flows")
class MLP(keras.layers.Layer):
  """Dense network `x (+ context) -> hidden -> ... -> output_units`, zero-initialised output.

  The zero last layer makes a coupling or autoregressive flow start as the identity
  (every transformer here is the identity at all-zero parameters). A context, when
  given, is concatenated to the input.

  Args:
    output_units: size of the output.
    hidden_units: sizes of the hidden layers.
    activation: activation of the hidden layers.
  """

  def __init__(self, output_units, hidden_units=(128, 128), activation="relu", **kwargs):
    super().__init__(**kwargs)
    if int(output_units) < 1:
      raise ValueError(f"output_units must be positive; got {output_units!r}.")
    self.output_units = int(output_units)
    self.hidden_units = tuple(int(u) for u in hidden_units)
    self.activation = activation
    # Every sublayer computes in this layer's dtype policy (float64, say), not the global one.
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
    shape = (None, width)
    for layer in self._hidden + [self._output]:
      layer.build(shape)
      shape = (None, layer.units)

  def call(self, inputs, context=None):
    h = inputs if context is None else keras.ops.concatenate(
        [inputs, keras.ops.cast(context, inputs.dtype)], axis=-1)
    for layer in self._hidden:
      h = layer(h)
    return self._output(h)

  def get_config(self):
    return {**super().get_config(), "output_units": self.output_units,
            "hidden_units": list(self.hidden_units), "activation": self.activation}
