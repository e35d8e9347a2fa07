"""The normalisation shared by the spectrally normalised layers, and an exact reference.

`SpectralNorm` divides a kernel by an estimate or certified bound of its linear map's
spectral norm (`MATHEMATICAL_DETAILS`); `SpectralNormDense` (`spectral_norm_dense.py`)
and `SpectralNormConv2D` (`spectral_norm_conv.py`) define the map.
`spectral_norm_exact` computes the exact norm in float64 for tests and diagnostics.

The bound is `lipschitz`, as `tfp_flows.layers.ResidualBlock` and the `ResidualFlow`
preset spell it; the layers also take the older `coefficient=` (one of the two), and
`.keras` files whose config has `coefficient` still load.
"""

import numbers

import keras
import numpy as np
import tensorflow as tf

from tfp_flows.numerics import aliases
from tfp_flows.numerics import checks
from tfp_flows.numerics import norm_bounds

__all__ = ["MATHEMATICAL_DETAILS", "SpectralNorm", "spectral_norm_exact"]

# Power steps run once at build on the initial kernel (as Residual Flows' reference code
# does), so the bound holds from the first training step instead of after ~100 of them.
_WARM_START_ITERATIONS = 100
# Above this many entries spectral_norm_exact switches from a dense SVD of the explicit
# convolution matrix to ARPACK on the convolution as an operator (same answer, no matrix).
_MAX_EXPLICIT_ENTRIES = 4_000_000
# The Gram iteration of evaluation calls stops once its upper bound is within this
# relative distance of its lower bound: the certified norm over-contracts by at most this.
_GRAM_TOLERANCE = 1e-5


def _lipschitz(lipschitz, coefficient):
  """The Lipschitz target as a float in (0, 1) (default 0.97), or a ValueError quoting it.

  `coefficient` is the older spelling of `lipschitz`; the error names the one passed.
  """
  value = aliases.resolve("lipschitz", lipschitz, "coefficient", coefficient, 0.97)
  if (isinstance(value, bool) or not isinstance(value, numbers.Real)
      or not 0.0 < float(value) < 1.0):
    raise ValueError(f"{aliases.spelling('lipschitz', 'coefficient', coefficient)} must be "
                     "in (0, 1): a residual block x + g(x) is invertible only if "
                     f"Lip(g) < 1; got {value!r}.")
  return float(value)


_WARM_STARTS = {}


def _warm_start(operator, kernel, u, v):
  """`_WARM_START_ITERATIONS` power steps in float64, as one graph per operator.

  Eagerly, 100 steps cost ~1000 op dispatches (about a second per layer); a concrete
  graph per operator with shape-free float64 signatures is traced once and reused by every
  layer (a concrete function also keeps tf.function's retracing warning quiet when a model
  has several operator kinds).
  """
  if operator not in _WARM_STARTS:
    rank = 2 if operator[0] == "dense" else 4
    vector = tf.TensorSpec([None] if rank == 2 else [1, None, None, None], tf.float64)
    _WARM_STARTS[operator] = tf.function(
        lambda k, u, v: norm_bounds.power_iteration(operator, k, u, v,
                                                    _WARM_START_ITERATIONS),
        autograph=False).get_concrete_function(
            tf.TensorSpec([None] * rank, tf.float64), vector, vector)
  cast = lambda x: tf.cast(x, tf.float64)
  return _WARM_STARTS[operator](cast(kernel), cast(u), cast(v))


def _random_unit(shape, dtype, seed):
  """A standard normal draw of `shape` scaled to unit l2 norm (a tensor)."""
  x = tf.convert_to_tensor(keras.initializers.RandomNormal(seed=seed)(shape, dtype=dtype))
  return x / tf.norm(tf.reshape(x, [-1]))


class SpectralNorm(keras.layers.Layer):
  """Shared normalisation machinery; subclasses define the linear map `A` of the kernel.

  Subclasses set `self._operator` (see `norm_bounds.linear_map`), `self._u_shape`,
  `self._v_shape`
  and `self._gram_size` (the size of the Gram matrix `_gram_and_lift` builds) in `build`,
  then call `_build_weights(kernel_shape, bias_shape)`.
  """

  def __init__(self, lipschitz, num_iterations, eval_iterations, exact_max_dims,
               use_bias, kernel_initializer, bias_initializer, seed, coefficient=None,
               **kwargs):
    super().__init__(**kwargs)
    self.lipschitz = _lipschitz(lipschitz, coefficient)
    self.num_iterations = checks.int_at_least("num_iterations", num_iterations)
    self.eval_iterations = checks.int_at_least("eval_iterations", eval_iterations)
    if not checks.is_int_at_least(exact_max_dims, 0):
      raise ValueError("exact_max_dims must be a non-negative int (0: never certify); got "
                       f"{exact_max_dims!r}.")
    self.exact_max_dims = int(exact_max_dims)
    self.use_bias = bool(use_bias)
    self.kernel_initializer = keras.initializers.get(kernel_initializer)
    self.bias_initializer = keras.initializers.get(bias_initializer)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
      raise ValueError(f"seed must be an int or None; got {seed!r}.")
    self.seed = seed

  def _build_weights(self, kernel_shape, bias_shape):
    """Creates kernel, bias, u, v; u, v start as the top singular pair of the initial kernel."""
    dtype = self.variable_dtype
    seeds = (None, None) if self.seed is None else (self.seed, self.seed + 1)
    # Eager even when the first call is being traced: the initial values are computed
    # once here, the kernel's before the vectors it determines, with no variable reads.
    with tf.init_scope():
      kernel = tf.convert_to_tensor(self.kernel_initializer(kernel_shape, dtype=dtype))
      u, v = (tf.cast(x, dtype) for x in _warm_start(
          self._operator, kernel, _random_unit(self._u_shape, dtype, seeds[0]),
          _random_unit(self._v_shape, dtype, seeds[1])))
    self.kernel = self.add_weight(shape=kernel_shape, initializer=lambda *_, **__: kernel,
                                  name="kernel")
    self.bias = (self.add_weight(shape=bias_shape, initializer=self.bias_initializer,
                                 name="bias") if self.use_bias else None)
    # Non-trainable weights: saved in `.keras` files and SavedModels, mirrored by
    # tf.distribute. Every replica computes the same update from the same (mirrored)
    # kernel, so the first replica's value is the value; "mean" would not keep them unit.
    self.u = self.add_weight(shape=self._u_shape, initializer=lambda *_, **__: u,
                             trainable=False, autocast=False,
                             aggregation="only_first_replica", name="u")
    self.v = self.add_weight(shape=self._v_shape, initializer=lambda *_, **__: v,
                             trainable=False, autocast=False,
                             aggregation="only_first_replica", name="v")

  @property
  def coefficient(self):
    """Older alias of `lipschitz`."""
    return self.lipschitz

  # Subclasses whose evaluation calls can fall back on a certified Fourier bound.
  _fourier_bounded = False

  @property
  def operator(self):
    """The linear map's `operator` tuple for `tfp_flows.numerics.norm_bounds`."""
    return self._operator

  @property
  def map_shapes(self):
    """(shape of the map's input vectors v, shape of its output vectors u)."""
    return self._v_shape, self._u_shape

  def matvec(self, kernel, v):
    """`A v` for `v` shaped like `self.v`."""
    return norm_bounds.linear_map(self._operator, kernel, v)

  def rmatvec(self, kernel, u):
    """`A^T u` for `u` shaped like `self.u`."""
    return norm_bounds.adjoint_map(self._operator, kernel, u, self._v_shape)

  def _gram_and_lift(self, kernel):
    """(Gram matrix of `A` on its smaller side, map of its vectors to the input side)."""
    raise NotImplementedError

  def norm_method(self, training=False):
    """How a call bounds the norm: "power iteration (k steps)", "Gram iteration" or
    "Fourier bound".

    "Gram iteration" (evaluation calls with a Gram matrix of at most `exact_max_dims`
    rows) divides by a certified upper bound within 1e-5 of the exact norm; "Fourier
    bound" (evaluation calls of larger convolutions with kernels bigger than 1x1) by a
    certified bound a few percent above it (see
    `tfp_flows.numerics.norm_bounds.conv_fourier_bound`); power
    iteration by an estimate that can fall short
    of it (see the class docstring).
    """
    if not training and self._gram_size <= self.exact_max_dims:
      return "Gram iteration"
    if not training and self._fourier_bounded and self.exact_max_dims > 0:
      return "Fourier bound"
    steps = self.num_iterations if training else self.eval_iterations
    return f"power iteration ({steps} step{'s' if steps > 1 else ''})"

  def _certified_sigma(self, kernel):
    """(u, v, sigma) with sigma = a certified upper bound on |A|_2, within 1e-5 of it."""
    frozen = tf.stop_gradient(kernel)
    gram, lift = self._gram_and_lift(frozen)
    bound, x = norm_bounds.gram_iteration(gram, _GRAM_TOLERANCE)
    v = norm_bounds.normalize_or_keep(tf.reshape(lift(x), self._v_shape),
                                      tf.cast(self.v, kernel.dtype))
    u = norm_bounds.normalize_or_keep(self.matvec(frozen, v),
                                      tf.cast(self.u, kernel.dtype))
    rayleigh = tf.reduce_sum(u * self.matvec(kernel, v))
    # The value is the bound; the gradient is that of s1 (u v^T through the Rayleigh
    # quotient), scaled by bound / rayleigh (1 up to the tolerance) to match the value.
    tiny = norm_bounds.TINY_NORM
    ratio = tf.where(rayleigh > tiny, bound / tf.maximum(rayleigh, tiny), 1.0)
    return u, v, rayleigh * tf.stop_gradient(ratio)

  def _normalize(self, training):
    """(W_hat, u, v, sigma) for a training or evaluation call, without changing state."""
    kernel = tf.convert_to_tensor(self.kernel)
    if not training and self._gram_size <= self.exact_max_dims:
      u, v, sigma = self._certified_sigma(kernel)
    elif not training and self._fourier_bounded and self.exact_max_dims > 0:
      u, v = tf.cast(self.u, kernel.dtype), tf.cast(self.v, kernel.dtype)
      sigma = norm_bounds.conv_fourier_bound(kernel, self.input_size[:2])
    else:
      num_iterations = self.num_iterations if training else self.eval_iterations
      # The vectors are constants of the normalisation (Miyato et al.): no
      # gradient through the iteration, only through sigma(W) = u^T A(W) v.
      u, v = norm_bounds.power_iteration(self._operator, tf.stop_gradient(kernel), self.u,
                                         self.v,
                              num_iterations)
      u, v = tf.stop_gradient(u), tf.stop_gradient(v)
      sigma = tf.reduce_sum(u * self.matvec(kernel, v))
    # As in i-ResNet and Residual Flows: rescale only when sigma > lipschitz, so a
    # kernel already inside the bound is used unchanged.
    factor = tf.maximum(tf.ones([], kernel.dtype), sigma / self.lipschitz)
    return kernel / factor, u, v, sigma

  def normalized_kernel(self, training=False):
    """The kernel `W_hat` the next call would use, computed without updating u or v.

    Args:
      training: True for the `num_iterations` estimate of a training call, False for the
        normalisation of an evaluation call (see `norm_method`).

    Returns:
      A tensor shaped like `self.kernel`.
    """
    return self._normalize(bool(training))[0]

  def kernel_for_call(self, training):
    """The normalised kernel of one call, updating u and v when `training` (as `call`).

    Lets a caller that applies the layer many times with the same weights (a
    fixed-point solve) run the power iteration once, then use `apply_kernel`.
    """
    return self._normalized_kernel_for_call(training)

  def _normalized_kernel_for_call(self, training):
    kernel, u, v, _ = self._normalize(bool(training))
    if training:
      self.u.assign(tf.cast(u, self.u.dtype))
      self.v.assign(tf.cast(v, self.v.dtype))
    return tf.cast(kernel, self.compute_dtype)

  def get_config(self):
    return {**super().get_config(), "lipschitz": self.lipschitz,
            "num_iterations": self.num_iterations, "eval_iterations": self.eval_iterations,
            "exact_max_dims": self.exact_max_dims, "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "seed": self.seed}


MATHEMATICAL_DETAILS = """
  #### Mathematical Details

  With `A` the linear map of the kernel `W`, every call divides `W` by an estimate or a
  bound `sigma` of `|A|_2 = s1`:

  ```none
  W_hat = W / max(1, sigma / lipschitz)
  ```

  (i-ResNet and Residual Flows scale down only when needed.)

  Training calls (`training=True`, as under `fit`): power iteration (Miyato et al.,
  Algorithm 1) from persistent unit vectors `u` (output side) and `v` (input side),
  `k = num_iterations` steps, stored back (`assign`) so the vectors track the slowly
  changing kernel across steps:

  ```none
  v <- A^T u / |A^T u|,   u <- A v / |A v|
  sigma = u^T A v                   (<= s1, -> s1 as k grows)
  ```

  `u` and `v` are constants of the normalisation (`tf.stop_gradient`); the gradient
  reaches `W` directly and through `sigma(W) = u^T A(W) v`, whose gradient is `u v^T` in
  matrix form. `build` starts `u`, `v` at the top singular pair of the initial kernel
  (100 steps from seeded random unit vectors, as the Residual Flows reference code does).

  Evaluation calls (`training` None or False; `log_prob`, export) store nothing, so the
  output is a pure function of the weights, identical call after call, after a `.keras`
  reload and in a SavedModel. When the Gram matrix of `A` on its smaller side has at most
  `exact_max_dims` rows, sigma is a certified upper bound on s1 by Gram iteration
  (Delattre et al. 2023): with `G = A^T A` or `A A^T`, `s1 <= |G^p|_F^(1/(2p))` for every
  `p = 2^j`, computed by repeated squaring; the iteration stops when the bound is within
  1e-5 of the Rayleigh quotient of its own top vector (a lower bound), so
  `|A_hat|_2 <= lipschitz` holds up to float rounding and the kernel is contracted at
  most 1e-5 more than needed. Squaring separates s1 from the rest of the spectrum however
  close they are (the excess is `log(m) / (4p)` for m tied values), which power iteration
  does not. Larger convolutions (kernels bigger than 1x1; a 1x1 kernel's Gram is its
  small kernel matrix at any image size) divide instead by a certified bound from the
  convolution's Fourier blocks (Sedghi et al. 2019; see
  `tfp_flows.numerics.norm_bounds.conv_fourier_bound`), 1-2%
  above the exact norm for 3x3 kernels on 12x12 images (more on smaller ones), so
  their evaluation-mode kernel is contracted that much more than the training calls'
  estimate (unless `exact_max_dims=0`: no certification). Otherwise (dense kernels with both sides larger
  than `exact_max_dims`) `eval_iterations` power steps run from the stored vectors, an
  estimate as below. `norm_method(training)` says which is in effect. Cost of the Gram
  iteration: building G (for convolutions, the map applied to the `n` basis images of its
  smaller side) and ~8 to ~17 `n x n` matmuls.

  Accuracy of power iteration. sigma never exceeds s1, so the bound holds up to the
  estimate's shortfall. It shrinks like `(s2 / s1)^(2k)` with a spectral gap, slowly when
  the top singular values nearly coincide (then the shortfall is at most about
  `s1 - s2`). Convolutions have such clusters, and under training the optimiser can grow
  an untracked direction of the cluster faster than one step per call follows it:
  measured on a 6x6 image with Adam 2e-3, a training step's normalised norm exceeded the
  bound by up to 6%, 20 further steps left 0.4%; from random vectors 20 steps can
  leave 2%, 100 steps 1e-6. Dense kernels tracked to 1e-5. For fast-moving convolutions
  raise `num_iterations`, and keep `lipschitz` far enough below 1 to absorb the rest.

  `u`, `v` are non-trainable weights, saved with the model and mirrored by tf.distribute
  (`aggregation="only_first_replica"`: every replica computes the same update from the
  same kernel).
"""


def spectral_norm_exact(layer, training=False, normalized=True):
  """The exact largest singular value of a spectral-norm layer's (normalised) linear map.

  For `SpectralNormDense` the SVD of the `[in, units]` kernel. For `SpectralNormConv2D`
  the operator norm of the convolution on the built image size, zero padding and strides
  included: the SVD of its explicit `[H W C, H' W' filters]` matrix (the convolution of
  the identity basis images) for small sizes, ARPACK (`scipy.sparse.linalg.svds`) on the
  convolution as an operator for larger ones. Computed in float64 with numpy; for tests
  and diagnostics, not for use inside a model.

  Args:
    layer: a built `SpectralNormDense` or `SpectralNormConv2D`.
    training: which normalised kernel (see `normalized_kernel`): the one of the next
      training call (`num_iterations` steps) or of an evaluation call (`norm_method`).
    normalized: False for the norm of the raw kernel `W` instead of `W_hat`.

  Returns:
    A Python float.

  Raises:
    ValueError: if `layer` is not a built spectral-norm layer.
  """
  if not isinstance(layer, SpectralNorm) or not layer.built:
    raise ValueError(f"spectral_norm_exact needs a built SpectralNormDense or "
                     f"SpectralNormConv2D; got {layer!r}.")
  kernel = layer.normalized_kernel(training) if normalized else layer.kernel
  kernel = np.asarray(keras.ops.convert_to_numpy(kernel), dtype=np.float64)
  if layer.operator[0] == "dense":
    return float(np.linalg.svd(kernel, compute_uv=False)[0])

  kernel = tf.constant(kernel)
  in_shape, out_shape = layer.map_shapes
  num_in, num_out = int(np.prod(in_shape)), int(np.prod(out_shape))
  conv = lambda x: layer.matvec(kernel, x)
  if num_in * num_out <= _MAX_EXPLICIT_ENTRIES:
    basis = tf.reshape(tf.eye(num_in, dtype=tf.float64), (num_in, *in_shape[1:]))
    matrix = tf.reshape(conv(basis), (num_in, num_out)).numpy()
    return float(np.linalg.svd(matrix, compute_uv=False)[0])

  import scipy.sparse.linalg  # pylint: disable=g-import-not-at-top  (only large shapes)
  operator = scipy.sparse.linalg.LinearOperator(
      (num_out, num_in), dtype=np.float64,
      matvec=lambda x: conv(tf.reshape(tf.constant(x, tf.float64), in_shape)).numpy().ravel(),
      rmatvec=lambda y: layer.rmatvec(
          kernel, tf.reshape(tf.constant(y, tf.float64), out_shape)).numpy().ravel())
  singular_values = scipy.sparse.linalg.svds(operator, k=1, return_singular_vectors=False,
                                             random_state=0)
  return float(singular_values[0])
