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
    self._hidden = [keras.layers.Dense(u, activation=activation, name=f"dense_{i}")
                    for i, u in enumerate(self.hidden_units)]
    self._output = keras.layers.Dense(self.output_units, kernel_initializer="zeros",
                                      bias_initializer="zeros", name="output")

  def call(self, inputs, context=None):
    h = inputs if context is None else keras.ops.concatenate(
        [inputs, keras.ops.cast(context, inputs.dtype)], axis=-1)
    for layer in self._hidden:
      h = layer(h)
    return self._output(h)

  def get_config(self):
    return {**super().get_config(), "output_units": self.output_units,
            "hidden_units": list(self.hidden_units), "activation": self.activation}
