"""Glow's convolutional conditioner: conv 3x3 -> ReLU -> conv 1x1 -> ReLU -> zero conv 3x3."""

import keras

__all__ = ["GlowConvNet"]


@keras.saving.register_keras_serializable(package="tfp_flows")
class GlowConvNet(keras.layers.Layer):
  """Image conditioner of Glow's coupling layers, with a zero-initialised last convolution.

  `[N, H, W, C_in] -> [N, H, W, output_channels]`. With `hidden_channels=0` it is a single
  zero-initialised 3x3 convolution (Glow's split prior). Cost per call:
  O(N H W (9 C_in h + h^2 + 9 h C_out)) for `h` hidden channels.

  Reference: Kingma & Dhariwal, Glow, https://arxiv.org/abs/1807.03039 (Sec. 3.3).

  Args:
    output_channels: channels of the output.
    hidden_channels: width of the two hidden convolutions, or 0 for none.
  """

  def __init__(self, output_channels, hidden_channels=512, **kwargs):
    super().__init__(**kwargs)
    if int(output_channels) < 1 or int(hidden_channels) < 0:
      raise ValueError("output_channels must be positive and hidden_channels "
                       f"non-negative; got {output_channels!r}, {hidden_channels!r}.")
    self.output_channels = int(output_channels)
    self.hidden_channels = int(hidden_channels)
    self._hidden = []
    if self.hidden_channels:
      # Every sublayer computes in this layer's dtype policy, not the global one.
      self._hidden = [
          keras.layers.Conv2D(self.hidden_channels, 3, padding="same", activation="relu",
                              dtype=self.dtype_policy, name="conv_in"),
          keras.layers.Conv2D(self.hidden_channels, 1, activation="relu",
                              dtype=self.dtype_policy, name="conv_mid"),
      ]
    self._output = keras.layers.Conv2D(self.output_channels, 3, padding="same",
                                       kernel_initializer="zeros", bias_initializer="zeros",
                                       dtype=self.dtype_policy, name="conv_out")

  def build(self, input_shape):
    """Creates every weight now, so a `.keras` reload finds them."""
    shape = tuple(input_shape)
    for layer in self._hidden + [self._output]:
      layer.build(shape)
      shape = shape[:-1] + (layer.filters,)

  def call(self, inputs):
    h = inputs
    for layer in self._hidden:
      h = layer(h)
    return self._output(h)

  def get_config(self):
    return {**super().get_config(), "output_channels": self.output_channels,
            "hidden_channels": self.hidden_channels}
