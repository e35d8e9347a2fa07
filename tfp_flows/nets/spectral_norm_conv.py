"""Conv2D layer whose operator norm on its image size is <= lipschitz."""

import math
import numbers

import keras
import tensorflow as tf

from tfp_flows.nets import spectral_norm
from tfp_flows.numerics import checks
from tfp_flows.numerics import norm_bounds

__all__ = ["SpectralNormConv2D"]


def _pair(name, value):
  """An int or a pair of ints as a tuple of two positive ints."""
  if isinstance(value, numbers.Integral):
    values = (value, value)
  else:
    try:
      values = tuple(value)
    except TypeError:  # None, 2.5: not a pair either
      values = ()
  if len(values) != 2:
    raise ValueError(f"{name} must be an int or a pair of ints; got {value!r}.")
  try:
    return tuple(checks.int_at_least(name, v) for v in values)
  except ValueError:
    raise ValueError(f"{name} must be a positive int or a pair of them; "
                     f"got {value!r}.") from None


@keras.saving.register_keras_serializable(package="tfp_flows")
class SpectralNormConv2D(spectral_norm.SpectralNorm):
  """Conv2D `[N, H, W, C] -> [N, H', W', filters]` whose operator norm is <= lipschitz.

  The norm bounded is that of the convolution as a linear map on the whole input image
  `[H, W, C] -> [H', W', filters]`, zero padding and strides included (as in Residual
  Flows), not of the reshaped kernel matrix (which can be off by a factor of up to
  `sqrt(kh * kw)`). The map depends on the image size, so the layer is built for one
  input size: `build` needs known `H` and `W`, and calls with another size raise.
  Channels last, no dilation.
  {math}
  Here `A v = conv2d(v, W)` and `A^T u = conv2d_transpose(u, W)` (its exact adjoint), with
  `v` shaped `[1, H, W, C]` and `u` shaped `[1, H', W', filters]`. Cost per power step:
  two convolutions of one image. The Gram matrix is that of the explicit operator on its
  smaller side, `min(H W C, H' W' filters)` rows (the convolution of that many basis
  images); for a 1x1 kernel, whose operator is the `[C, filters]` kernel matrix applied
  at every sampled pixel, that of the kernel matrix, `min(C, filters)` rows at any size.

  #### References

  [1]: Miyato, Kataoka, Koyama, Yoshida. Spectral Normalization for Generative Adversarial
       Networks. https://arxiv.org/abs/1802.05957
  [2]: Gouk, Frank, Pfahringer, Cree. Regularisation of Neural Networks by Enforcing
       Lipschitz Continuity (power iteration with the transposed convolution).
       https://arxiv.org/abs/1804.04368
  [3]: Chen, Behrmann, Duvenaud, Jacobsen. Residual Flows for Invertible Generative
       Modeling. https://arxiv.org/abs/1906.02735

  Args:
    filters: output channels.
    kernel_size: an int or a pair `(kh, kw)`.
    lipschitz: the bound on the operator norm, in (0, 1); default 0.97.
    num_iterations: power-iteration steps per training call (stored).
    eval_iterations: power-iteration steps per evaluation call (not stored), used only
      with `exact_max_dims=0` or for a 1x1 kernel whose Gram matrix is larger.
    exact_max_dims: largest Gram matrix (rows) for which evaluation calls use the
      certified Gram-iteration bound; larger convolutions (kernels bigger than 1x1) use
      the certified Fourier bound (0: never certify, always power iteration).
    padding: "same" or "valid" (zero padding, as `tf.nn.conv2d`).
    strides: an int or a pair.
    use_bias: whether to add a bias.
    kernel_initializer: initializer of the raw kernel `[kh, kw, C, filters]`.
    bias_initializer: initializer of the bias.
    seed: int seed of the random initial `u`, `v` (None: Keras' global seed).
    coefficient: older alias of `lipschitz` (pass one of the two).
    **kwargs: `keras.layers.Layer` arguments.

  Raises:
    ValueError: for bad arguments (`lipschitz` in both spellings included), an input with unknown `H`, `W` or `C`, a "valid"
      convolution with an empty output, or a call on another image size than built for.
  """

  def __init__(self, filters, kernel_size, lipschitz=None, num_iterations=1,
               eval_iterations=20, exact_max_dims=256, padding="same", strides=1,
               use_bias=True, kernel_initializer="glorot_uniform", bias_initializer="zeros",
               seed=None, *, coefficient=None, **kwargs):
    super().__init__(lipschitz, num_iterations, eval_iterations, exact_max_dims,
                     use_bias, kernel_initializer, bias_initializer, seed,
                     coefficient=coefficient, **kwargs)
    self.filters = checks.int_at_least("filters", filters)
    self.kernel_size = _pair("kernel_size", kernel_size)
    self.strides = _pair("strides", strides)
    if not isinstance(padding, str) or padding.lower() not in ("same", "valid"):
      raise ValueError(f'padding must be "same" or "valid"; got {padding!r}.')
    self.padding = padding.lower()

  def build(self, input_shape):
    if len(input_shape) != 4 or any(d is None for d in input_shape[1:]):
      raise ValueError("SpectralNormConv2D needs inputs [N, H, W, C] with known H, W and "
                       "C: the operator norm of a convolution depends on the image size; "
                       f"got shape {tuple(input_shape)}.")
    height, width, channels = (int(d) for d in input_shape[1:])
    out_size = []
    for size, k, s in zip((height, width), self.kernel_size, self.strides):
      out_size.append(math.ceil(size / s) if self.padding == "same"
                      else math.ceil((size - k + 1) / s))
    if min(out_size) < 1:
      raise ValueError(f'A "valid" convolution with kernel_size {self.kernel_size} has an '
                       f"empty output on inputs of shape {tuple(input_shape)}.")
    self.input_size = (height, width, channels)
    self._operator = ("conv", self.strides, self.padding.upper())
    self._u_shape = (1, *out_size, self.filters)
    self._v_shape = (1, height, width, channels)
    self._gram_size = (min(channels, self.filters) if self.kernel_size == (1, 1) else
                       min(math.prod(self._v_shape), math.prod(self._u_shape)))
    # A 1x1 kernel's Gram is its small kernel matrix at any image size.
    self._fourier_bounded = self.kernel_size != (1, 1)
    self._build_weights((*self.kernel_size, channels, self.filters), (self.filters,))

  def _gram_and_lift(self, kernel):
    height, width, channels = self.input_size
    if self.kernel_size == (1, 1):
      # Pixel (0, 0) is read by every 1x1 convolution ("same" needs no padding for k = 1),
      # so the kernel matrix's input-side vector placed there is a top input image.
      gram, lift = norm_bounds.matrix_gram(tf.reshape(kernel, (channels, self.filters)))
      return gram, lambda x: tf.pad(tf.reshape(lift(x), (1, 1, 1, channels)),
                                    ((0, 0), (0, height - 1), (0, width - 1), (0, 0)))
    num_in, num_out = math.prod(self._v_shape), math.prod(self._u_shape)
    eye = lambda n: tf.eye(n, dtype=kernel.dtype)
    if num_in <= num_out:  # rows A e_i: G = A^T A, eigenvectors are input images
      rows = tf.reshape(self.matvec(kernel, tf.reshape(eye(num_in), (num_in, *self.input_size))),
                        (num_in, num_out))
      return tf.matmul(rows, rows, transpose_b=True), lambda x: x
    # rows A^T e_j: G = A A^T; an output-side x lifts to A^T x = x^T rows.
    rows = tf.reshape(tf.nn.conv2d_transpose(
        tf.reshape(eye(num_out), (num_out, *self._u_shape[1:])), kernel,
        output_shape=(num_out, height, width, channels), strides=self.strides,
        padding=self.padding.upper()), (num_out, num_in))
    return (tf.matmul(rows, rows, transpose_b=True),
            lambda x: tf.linalg.matvec(rows, x, transpose_a=True))

  def call(self, inputs, training=None):
    if tuple(inputs.shape[1:]) != self.input_size and None not in inputs.shape[1:]:
      raise ValueError(f"SpectralNormConv2D was built (and its norm bounded) for images "
                       f"{self.input_size}; got inputs of shape {tuple(inputs.shape)}.")
    return self.apply_kernel(inputs, self._normalized_kernel_for_call(training))

  def apply_kernel(self, inputs, kernel):
    """The layer's map with a given (already normalised) kernel: `conv(inputs) + b`."""
    outputs = tf.nn.conv2d(inputs, kernel, strides=self.strides,
                           padding=self.padding.upper())
    if self.bias is not None:
      outputs = outputs + tf.cast(self.bias, outputs.dtype)
    return outputs

  def compute_output_shape(self, input_shape):
    return (input_shape[0], *self._u_shape[1:])

  def get_config(self):
    return {**super().get_config(), "filters": self.filters,
            "kernel_size": list(self.kernel_size), "strides": list(self.strides),
            "padding": self.padding}


SpectralNormConv2D.__doc__ = SpectralNormConv2D.__doc__.format(
    math=spectral_norm.MATHEMATICAL_DETAILS)
