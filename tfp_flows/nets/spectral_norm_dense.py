"""Dense layer whose spectral norm is <= lipschitz (i-ResNet / Residual Flows)."""

import keras

from tfp_flows.nets import spectral_norm
from tfp_flows.numerics import checks
from tfp_flows.numerics import norm_bounds

__all__ = ["SpectralNormDense"]


@keras.saving.register_keras_serializable(package="tfp_flows")
class SpectralNormDense(spectral_norm.SpectralNorm):
  """Dense layer `y = x W_hat + b` with `|W_hat|_2 <= lipschitz` (spectral norm).

  The building block of the residual function `g` of i-ResNets and Residual Flows: with
  1-Lipschitz activations between such layers, `Lip(g) <= lipschitz < 1` and the block
  `x + g(x)` is invertible. There is no activation argument: use `LipSwish` (or another
  1-Lipschitz activation) as a separate layer.
  {math}
  Here `A v = W^T v` (`W` is `[in, units]`), `u` is `[units]` and `v` is `[in]`. Cost per
  power step: two matrix-vector products, O(in * units). The Gram matrix is `W W^T` or
  `W^T W`, of size `min(in, units)`.

  #### References

  [1]: Miyato, Kataoka, Koyama, Yoshida. Spectral Normalization for Generative Adversarial
       Networks. https://arxiv.org/abs/1802.05957
  [2]: Behrmann, Grathwohl, Chen, Duvenaud, Jacobsen. Invertible Residual Networks.
       https://arxiv.org/abs/1811.00995
  [3]: Chen, Behrmann, Duvenaud, Jacobsen. Residual Flows for Invertible Generative
       Modeling. https://arxiv.org/abs/1906.02735

  Args:
    units: size of the output.
    lipschitz: the bound on the spectral norm, in (0, 1); default 0.97.
    num_iterations: power-iteration steps per training call (stored).
    eval_iterations: power-iteration steps per evaluation call (not stored), used only
      when the Gram matrix is larger than `exact_max_dims`.
    exact_max_dims: largest Gram matrix (rows) for which evaluation calls use the
      certified Gram-iteration bound (0: always power iteration).
    use_bias: whether to add a bias (it does not change the Lipschitz constant).
    kernel_initializer: initializer of the raw kernel `W`.
    bias_initializer: initializer of the bias.
    seed: int seed of the random initial `u`, `v` (None: drawn from Keras' global seed,
      so `keras.utils.set_random_seed` makes it reproducible).
    coefficient: older alias of `lipschitz` (pass one of the two).
    **kwargs: `keras.layers.Layer` arguments (`name`, `dtype="float64"`, ...).

  Raises:
    ValueError: for a bound outside (0, 1) or passed in both spellings, non-positive
      counts, or an input whose last dimension is unknown.
  """

  def __init__(self, units, lipschitz=None, num_iterations=1, eval_iterations=20,
               exact_max_dims=256, use_bias=True, kernel_initializer="glorot_uniform",
               bias_initializer="zeros", seed=None, *, coefficient=None, **kwargs):
    super().__init__(lipschitz, num_iterations, eval_iterations, exact_max_dims,
                     use_bias, kernel_initializer, bias_initializer, seed,
                     coefficient=coefficient, **kwargs)
    self.units = checks.int_at_least("units", units)

  def build(self, input_shape):
    if input_shape[-1] is None:
      raise ValueError(f"SpectralNormDense needs a known last input dimension; got shape "
                       f"{tuple(input_shape)}.")
    in_units = int(input_shape[-1])
    self._operator = ("dense",)
    self._u_shape, self._v_shape = (self.units,), (in_units,)
    self._gram_size = min(in_units, self.units)
    self._build_weights((in_units, self.units), (self.units,))

  def _gram_and_lift(self, kernel):
    return norm_bounds.matrix_gram(kernel)

  def call(self, inputs, training=None):
    return self.apply_kernel(inputs, self._normalized_kernel_for_call(training))

  def apply_kernel(self, inputs, kernel):
    """The layer's map with a given (already normalised) kernel: `inputs @ kernel + b`."""
    outputs = keras.ops.matmul(inputs, kernel)
    if self.bias is not None:
      outputs = outputs + keras.ops.cast(self.bias, outputs.dtype)
    return outputs

  def compute_output_shape(self, input_shape):
    return (*input_shape[:-1], self.units)

  def get_config(self):
    return {**super().get_config(), "units": self.units}


SpectralNormDense.__doc__ = SpectralNormDense.__doc__.format(
    math=spectral_norm.MATHEMATICAL_DETAILS)
