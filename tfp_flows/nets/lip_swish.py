"""LipSwish: a 1-Lipschitz Swish activation with a learned slope, for residual flows."""

import math
import numbers

import keras

__all__ = ["LipSwish", "lip_swish"]

# max_z d/dz [z sigmoid(z)] = 1.0998...: dividing by 1.1 makes Swish 1-Lipschitz for every
# slope beta, since d/dx [x sigmoid(beta x)] is that same function of z = beta x.
_SCALE = 1.1
# softplus(0.5): the reference implementation of Residual Flows stores the raw parameter
# b = 0.5 and uses beta = softplus(b).
_DEFAULT_BETA = math.log1p(math.exp(0.5))


def lip_swish(x, beta):
  """`x * sigmoid(beta * x) / 1.1`, a 1-Lipschitz function of `x` for every real `beta`.

  #### Mathematical Details

  With `z = beta x` and `s = sigmoid(z)`,

  ```none
  f(x)  = x s / 1.1
  f'(x) = (s + z s (1 - s)) / 1.1        in [-0.0998 / 1.1, 1.0998 / 1.1]
  ```

  The derivative depends on `x` and `beta` only through `z`, so its range is the same for
  every real `beta` (Chen et al.), and `|f'| <= 1.0998393 / 1.1 = 0.9998539 < 1`.

  Args:
    x: a float tensor.
    beta: the slope, a tensor broadcastable against `x` (the layer passes
      `softplus(b) > 0`).

  Returns:
    A tensor shaped like `x`.
  """
  x = keras.ops.convert_to_tensor(x)
  # convert_to_tensor with the dtype (not cast): a Python float beta would otherwise pass
  # through float32 on its way to a float64 x.
  beta = keras.ops.convert_to_tensor(beta, dtype=x.dtype)
  return x * keras.ops.sigmoid(beta * x) / _SCALE


@keras.saving.register_keras_serializable(package="tfp_flows")
class LipSwish(keras.layers.Layer):
  """The LipSwish activation `x * sigmoid(beta x) / 1.1` with a learned scalar `beta > 0`.

  The activation of the residual functions of Residual Flows: 1-Lipschitz (see
  `lip_swish`) and smooth. Chen et al. prefer it to ELU or softplus because
  its second derivative does not vanish where `|f'|` is close to 1, so the gradient of the
  log-determinant does not saturate when `g` uses its whole Lipschitz budget.
  `beta = softplus(b)` keeps the slope positive with an unconstrained trainable scalar `b`
  (weight `beta_parameter`). The default start, `beta = softplus(0.5) = 0.974`, is that of
  the authors' implementation (`b = 0.5`).

  #### References

  [1]: Chen, Behrmann, Duvenaud, Jacobsen. Residual Flows for Invertible Generative
       Modeling. https://arxiv.org/abs/1906.02735
  [2]: Ramachandran, Zoph, Le. Searching for Activation Functions (Swish).
       https://arxiv.org/abs/1710.05941

  Args:
    initial_beta: the starting slope `beta`, a positive float.
    **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, `trainable`, ...).

  Raises:
    ValueError: if `initial_beta` is not a positive finite number.
  """

  def __init__(self, initial_beta=_DEFAULT_BETA, **kwargs):
    super().__init__(**kwargs)
    if (isinstance(initial_beta, bool) or not isinstance(initial_beta, numbers.Real)
        or not 0.0 < float(initial_beta) < math.inf):
      raise ValueError(f"initial_beta must be a positive finite number; got "
                       f"{initial_beta!r}.")
    self.initial_beta = float(initial_beta)

  def build(self, input_shape):
    # softplus^-1(beta) = log(expm1(beta)), written as beta + log(-expm1(-beta)) so that a
    # large beta does not overflow exp.
    raw = self.initial_beta + math.log(-math.expm1(-self.initial_beta))
    self.beta_parameter = self.add_weight(
        shape=(), initializer=keras.initializers.Constant(raw), name="beta_parameter")

  @property
  def beta(self):
    """The current slope `softplus(b)`, a scalar tensor."""
    return keras.ops.softplus(self.beta_parameter)

  def call(self, inputs):
    return lip_swish(inputs, keras.ops.softplus(keras.ops.cast(self.beta_parameter,
                                                               inputs.dtype)))

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), "initial_beta": self.initial_beta}
