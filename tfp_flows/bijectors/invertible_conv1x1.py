"""Invertible 1x1 convolution: a learned channel-mixing matrix applied at every pixel."""

import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.internal import tensor_util

from tfp_flows.bijectors import variable_tracking
from tfp_flows.numerics import checks as _checks

__all__ = ["InvertibleConv1x1", "log_abs_det"]

tfb = tfp.bijectors


@tf.custom_gradient
def _log_abs_det(matrix):
  """log|det W| by a QR decomposition, with gradient W^{-T}.

  TF's `LogMatrixDeterminant` and `Lu` have no XLA kernel; `Qr` and `MatrixInverse` do.
  |det W| = |det Q| |det R| = prod_i |R_ii| since Q is orthogonal.
  """
  r = tf.linalg.qr(matrix)[1]
  value = tf.reduce_sum(tf.math.log(tf.abs(tf.linalg.diag_part(r))), axis=-1)

  def grad(upstream):
    return upstream[..., tf.newaxis, tf.newaxis] * tf.linalg.matrix_transpose(
        tf.linalg.inv(matrix))

  return value, grad


def log_abs_det(matrix):
  """log|det matrix| for a batch of square matrices, XLA-compilable, O(C^3)."""
  return _log_abs_det(tf.convert_to_tensor(matrix))


class InvertibleConv1x1(tfb.AutoCompositeTensorBijector):
  """Channel mixing y = W x at every position of the last axis (Glow's 1x1 convolution).

  Two parameterisations of the `C x C` matrix `W`:

  * plain: `InvertibleConv1x1(weight=W)`; log|det W| by QR, O(C^3) per call.
  * LU: `InvertibleConv1x1(permutation=p, lower=L, upper=U, log_abs_diag=s, sign=g)` with
    `W = P L (U_strict + diag(g * exp(s)))`, `P` the fixed permutation matrix
    with rows `P[i, :] = e_{p[i]}`, `L` unit lower-triangular (only its strict lower part is read),
    `U_strict` strictly upper-triangular (only its strict upper part is read), `g` a
    fixed sign in {-1, +1}. `W` can never be singular and log|det W| = sum(s), O(C).

  #### Mathematical Details

  ```none
  forward:   y[..., :] = W x[..., :]
  inverse:   x[..., :] = W^{-1} y[..., :]
  log-det:   log|det W|   (per vector of C channels; TFP multiplies by H * W for images)
  ```

  Both directions cost one C x C matrix product per position plus, per call, O(C^3)
  to form `W^{-1}` (by triangular solves for LU): far cheaper than a per-pixel solve.

  #### References

  [1]: Diederik P. Kingma and Prafulla Dhariwal. Glow: Generative Flow with Invertible
       1x1 Convolutions. NeurIPS 2018. https://arxiv.org/abs/1807.03039
  """

  def __init__(self, weight=None, permutation=None, lower=None, upper=None,
               log_abs_diag=None, sign=None, validate_args=False,
               name="invertible_conv1x1"):
    """Creates the bijector from a plain matrix or from its LU factors.

    Float parameters may be variables (`tf.Variable`s, or Keras variables, whose
    `tf.Variable` is used): they stay variables, read on every call, so gradients reach
    them and `trainable_variables` and the composite-tensor form carry them.

    Args:
      weight: float tensor `[..., C, C]`; give this alone for the plain variant.
      permutation: integer tensor `[C]`, a permutation of `range(C)` (LU variant).
      lower: float tensor `[..., C, C]`; its strict lower triangle is L's.
      upper: float tensor `[..., C, C]`; its strict upper triangle is U's.
      log_abs_diag: float tensor `[..., C]`, log of |U's diagonal|.
      sign: float tensor `[C]` of +-1, the signs of U's diagonal.
      validate_args: if True, check that the plain `weight` is finite and that inputs
        have `C` channels.
      name: name scope of the bijector's ops.

    Raises:
      ValueError: if neither or both parameterisations are given, or shapes disagree.
    """
    weight, lower, upper, log_abs_diag, sign = (
        variable_tracking.unwrap_variable(v)
        for v in (weight, lower, upper, log_abs_diag, sign))
    parameters = dict(locals())
    lu_parts = (permutation, lower, upper, log_abs_diag, sign)
    if (weight is None) == all(p is None for p in lu_parts):
      raise ValueError(
          "InvertibleConv1x1 needs either `weight` alone (plain variant) or all of "
          "`permutation`, `lower`, `upper`, `log_abs_diag`, `sign` (LU variant).")
    if weight is None and any(p is None for p in lu_parts):
      raise ValueError(
          "The LU variant of InvertibleConv1x1 needs all of `permutation`, `lower`, "
          "`upper`, `log_abs_diag` and `sign`.")
    with tf.name_scope(name) as name:
      dtype = _checks.common_dtype([weight, lower, upper, log_abs_diag, sign])
      # Variables stay variables (read on every call, watched by tapes, carried by the
      # composite-tensor form); anything else becomes a tensor.
      convert = lambda v, n: None if v is None else tensor_util.convert_nonref_to_tensor(
          v, dtype=dtype, name=n)
      self._weight = convert(weight, "weight")
      self._lower = convert(lower, "lower")
      self._upper = convert(upper, "upper")
      self._log_abs_diag = convert(log_abs_diag, "log_abs_diag")
      self._sign = convert(sign, "sign")
      self._permutation = None
      if permutation is not None:
        # Any integer dtype, as tfb.Permute takes (NumPy's default is int64).
        permutation = tf.convert_to_tensor(permutation, name="permutation")
        if not permutation.dtype.is_integer:
          raise TypeError(f"permutation must hold integers; got {permutation.dtype.name}.")
        self._permutation = tf.cast(permutation, tf.int32)
      square = self._weight if weight is not None else self._lower
      if square.shape.rank is not None and (
          square.shape.rank < 2 or square.shape[-1] != square.shape[-2]):
        raise ValueError(
            f"InvertibleConv1x1 needs square C x C matrices; got shape {square.shape}.")
      super().__init__(forward_min_event_ndims=1, is_constant_jacobian=True, dtype=dtype,
                       validate_args=validate_args, parameters=parameters, name=name)

  @classmethod
  def _parameter_properties(cls, dtype):
    matrix = tfp.util.ParameterProperties(event_ndims=2)
    return {
        "weight": matrix,
        "permutation": tfp.util.ParameterProperties(
            event_ndims=1, is_preferred=False),
        "lower": matrix,
        "upper": matrix,
        "log_abs_diag": tfp.util.ParameterProperties(event_ndims=1),
        "sign": tfp.util.ParameterProperties(event_ndims=1, is_preferred=False),
    }

  @property
  def is_lu(self):
    return self._weight is None

  def _parameter_control_dependencies(self, is_init):
    if not self.validate_args or not is_init:
      return []
    if self.is_lu:
      return _checks.assert_finite(self._log_abs_diag,
                                   "InvertibleConv1x1: log_abs_diag must be finite.")
    return _checks.assert_finite(self._weight, "InvertibleConv1x1: weight must be finite.")

  def _lu_factors(self):
    batch = tf.broadcast_dynamic_shape(
        tf.broadcast_dynamic_shape(tf.shape(self._lower)[:-2], tf.shape(self._upper)[:-2]),
        tf.shape(self._log_abs_diag)[:-1])
    channels = tf.shape(self._lower)[-1:]
    square = tf.concat([batch, channels, channels], 0)
    diag = tf.broadcast_to(self._sign * tf.exp(self._log_abs_diag),
                           tf.concat([batch, channels], 0))
    lower = tf.linalg.set_diag(
        tf.linalg.band_part(tf.broadcast_to(self._lower, square), -1, 0),
        tf.ones_like(diag))
    upper = tf.linalg.set_diag(
        tf.linalg.band_part(tf.broadcast_to(self._upper, square), 0, -1), diag)
    permutation = tf.gather(tf.eye(tf.shape(self._permutation)[0], dtype=self.dtype),
                            self._permutation)
    return permutation, lower, upper

  def matrix(self):
    """The C x C matrix W."""
    if not self.is_lu:
      return self._weight
    permutation, lower, upper = self._lu_factors()
    return tf.matmul(permutation, tf.matmul(lower, upper))

  def inverse_matrix(self):
    """W^{-1}: by two triangular solves for LU, by `tf.linalg.inv` for the plain W."""
    if not self.is_lu:
      return tf.linalg.inv(self._weight)
    permutation, lower, upper = self._lu_factors()
    eye = tf.eye(tf.shape(lower)[-1], dtype=self.dtype)
    lower_inv = tf.linalg.triangular_solve(lower, eye, lower=True)
    upper_inv_lower_inv = tf.linalg.triangular_solve(upper, lower_inv, lower=False)
    return tf.matmul(upper_inv_lower_inv, permutation, transpose_b=True)

  def _channels(self):
    square = self._weight if not self.is_lu else self._lower
    return tf.compat.dimension_value(square.shape[-1])

  def _forward(self, x):
    x = _checks.check_last_dim(x, self._channels(), "InvertibleConv1x1")
    return _apply(self.matrix(), x)

  def _inverse(self, y):
    y = _checks.check_last_dim(y, self._channels(), "InvertibleConv1x1")
    return _apply(self.inverse_matrix(), y)

  def _forward_log_det_jacobian(self, x):
    if self.is_lu:
      return tf.reduce_sum(self._log_abs_diag, axis=-1)
    return log_abs_det(self._weight)


def _apply(matrix, x):
  """matrix @ x[..., :] at every position; one 2-D matmul when the matrix is unbatched."""
  if matrix.shape.rank == 2:
    return tf.tensordot(x, matrix, axes=[[-1], [1]])
  return tf.linalg.matvec(matrix, x)
