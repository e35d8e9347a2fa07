"""Spectral norms of linear maps: power-iteration estimates and certified upper bounds.

The maps are a dense kernel (`A x = W^T x`) or a zero-padded, strided 2-D convolution,
named by an `operator` tuple: `("dense",)` or `("conv", strides, padding)`. Power
iteration (`power_iteration`) estimates the largest singular value from below; the Gram
iteration (`gram_iteration`, on an explicit Gram matrix) and the Fourier bound of a
convolution (`conv_fourier_bound`) bound it from above. `tfp_flows.nets.SpectralNormDense`
and `SpectralNormConv2D` normalise their kernels with these.
"""

import tensorflow as tf

__all__ = ["TINY_NORM", "adjoint_map", "conv_fourier_bound", "gram_iteration",
           "linear_map", "matrix_gram", "max_squarings", "normalize_or_keep",
           "power_iteration"]

# A power-iteration vector shorter than this is treated as zero (a zero or rank-deficient
# kernel annihilated it) and the previous unit vector is kept, so the estimate can recover
# once the kernel grows; a zero-initialised kernel would otherwise zero u for good.
TINY_NORM = 1e-12


def linear_map(operator, kernel, x):
  """`A x` for `operator` ("dense",) (`A x = W^T x`) or ("conv", strides, padding)."""
  if operator[0] == "dense":
    return tf.linalg.matvec(kernel, x, transpose_a=True)
  return tf.nn.conv2d(x, kernel, strides=operator[1], padding=operator[2])


def adjoint_map(operator, kernel, y, input_shape):
  """`A^T y`; `input_shape` is the shape of the convolution's input (a tuple or tensor)."""
  if operator[0] == "dense":
    return tf.linalg.matvec(kernel, y)
  # conv2d_transpose with the input's shape as output_shape is the gradient of conv2d with
  # respect to its input: the exact adjoint, padding and strides included.
  return tf.nn.conv2d_transpose(y, kernel, output_shape=input_shape, strides=operator[1],
                                padding=operator[2])


def normalize_or_keep(x, previous):
  """`x / |x|`, or `previous` where `x` is (numerically) zero."""
  norm = tf.norm(tf.reshape(x, [-1]))
  return tf.where(norm > TINY_NORM, x / tf.maximum(norm, TINY_NORM), previous)


def power_iteration(operator, kernel, u, v, num_iterations):
  """`num_iterations` steps `v <- A^T u / |A^T u|`, `u <- A v / |A v|` from `u`, `v`."""
  dtype = kernel.dtype
  v_shape = tuple(v.shape) if v.shape.is_fully_defined() else tf.shape(v)

  def body(i, u, v):
    v = normalize_or_keep(adjoint_map(operator, kernel, u, v_shape), v)
    u = normalize_or_keep(linear_map(operator, kernel, v), u)
    return i + 1, u, v

  # A while loop rather than unrolling: eval_iterations=20 convolution pairs would
  # otherwise be 40 ops in every traced graph; XLA compiles the loop as is.
  _, u, v = tf.while_loop(lambda i, u, v: i < num_iterations, body,
                          (tf.constant(0), tf.cast(u, dtype), tf.cast(v, dtype)))
  return u, v


def max_squarings(size, tolerance):
  """Squarings after which the Gram bound is within `tolerance` of s1 for any spectrum.

  After t squarings the bound is `(sum_i s_i^(4p))^(1/(4p))` with p = 2^t, at most
  `rank^(1/(4p)) s1 <= size^(1/(4p)) s1`.
  """
  t = 0
  while size ** (1.0 / (4 * 2 ** t)) > 1.0 + tolerance:
    t += 1
  return t


def gram_iteration(gram, tolerance):
  """An upper bound on `sqrt(lambda_max(gram))` and the top eigenvector, by Gram iteration.

  For the symmetric positive semi-definite `G = A^T A` (or `A A^T`) of a linear map A,
  repeated squaring with renormalisation (Delattre et al. 2023):

  ```none
  M_0 = G / |G|_F,   M_j = M_{j-1}^2 / |M_{j-1}^2|_F = G^(2^j) / |G^(2^j)|_F
  bound_j = |G^p|_F^(1/(2p)), p = 2^j:
  log bound_j = log|G|_F / 2 + sum_{i<=j} log|M_{i-1}^2|_F / 2^(i+1)
  s1 = lambda_max(G)^(1/2) <= bound_j = s1 (1 + sum_{i>1} (s_i/s1)^(4p))^(1/(4p))
  ```

  The bound holds for every j (a Frobenius norm is at least the spectral norm), never
  increases with j, and its excess is at most `log(m) / (4p)` relative for m singular
  values tied with s1: squaring separates s1 from the rest however close they are, which
  power iteration on A does not. M_j tends to `v1 v1^T`, so its largest column is the top
  eigenvector; `sqrt(x^T G x)` for that unit column x is a lower bound on s1. The loop
  stops when bound <= (1 + tolerance) lower, or after `max_squarings` steps (when the
  bound is within `tolerance` of s1 whatever the spectrum); two products `x <- M_j x`
  then refine the vector. Cost: one `n x n` matmul per step, about 8 steps for a
  spectral gap of 5%, at most ~17 for n <= 256.

  Args:
    gram: symmetric PSD `[n, n]` tensor with static n.
    tolerance: relative gap between the bounds at which to stop.

  Returns:
    `(bound, x)`: the upper bound (a scalar) and a unit `[n]` vector (zero if G is 0).
  """
  size = int(gram.shape[0])
  tiny = tf.constant(TINY_NORM, gram.dtype)
  scale = tf.norm(gram)
  log_bound = 0.5 * tf.math.log(tf.maximum(scale, tiny))

  def top_vector(m):
    column = tf.argmax(tf.reduce_sum(m * m, axis=0))
    x = tf.gather(m, column, axis=1)
    return x / tf.maximum(tf.norm(x), tiny)

  def body(j, m, log_bound, _):
    m = tf.matmul(m, m)
    norm = tf.maximum(tf.norm(m), tiny)
    m = m / norm
    log_bound += tf.math.log(norm) * tf.pow(tf.constant(0.5, gram.dtype),
                                            tf.cast(j + 2, gram.dtype))
    x = top_vector(m)
    lower = tf.sqrt(tf.maximum(tf.tensordot(x, tf.linalg.matvec(gram, x), 1), 0.0))
    return j + 1, m, log_bound, tf.exp(log_bound) <= lower * (1.0 + tolerance)

  _, m, log_bound, _ = tf.while_loop(
      lambda j, m, log_bound, done: tf.logical_and(j < max_squarings(size, tolerance),
                                                    tf.logical_not(done)),
      body, (tf.constant(0), gram / tf.maximum(scale, tiny), log_bound,
             tf.constant(False)))
  # The stopping rule bounds the Rayleigh quotient's error, which is quadratic in the
  # vector's angle error e = (l2 / l1)^p, so e itself is only ~sqrt(tolerance / gap).
  # Each product with M ~ v1 v1^T + e v2 v2^T multiplies e by e again (n^2 work).
  x = top_vector(m)
  for _ in range(2):
    x = tf.linalg.matvec(m, x)
    x = x / tf.maximum(tf.norm(x), tiny)
  return tf.exp(log_bound), x


# Squarings of the per-frequency Gram matrices in `conv_fourier_bound`: the bound's
# excess is at most m^(1/(4 * 2^10)) for m singular values tied with the largest in one
# frequency block (1.0002 for m = 2, 1.001 for m = 64).
FOURIER_SQUARINGS = 10


def conv_fourier_bound(kernel, input_size):
  """A certified upper bound on the norm of a zero-padded convolution, from its DFT.

  On an `n1 x n2` torus a circular convolution is block-diagonalised by the 2-D DFT: its
  norm is the largest singular value over the frequencies w of the `C x F` blocks
  `K(w) = sum_{p,q} W[p, q] e^(-i (w1 p + w2 q))` (Sedghi, Gupta and Long 2019). With
  `n1 >= H + kh - 1` and `n2 >= W + kw - 1` the zero-padded convolution of an `H x W`
  image ("same" or "valid") is that circular one applied to the zero-embedded image and
  cropped, and a stride only subsamples the output, so

  ```none
  |A|_2 <= max_w s1(K(w))      over the n1 x (n2 // 2 + 1) frequencies of rfft2d
  ```

  (conjugate frequencies have the same singular values). The per-frequency s1 are
  bounded by `FOURIER_SQUARINGS` Gram squarings (as `gram_iteration`, batched over
  frequencies, in float64), so the result is an upper bound at every step. It exceeds
  the exact norm of the zero-padded map by the boundary's effect, which shrinks as the
  image grows: measured for 3x3 "same" kernels 1-2% at 12x12 and 16x16, 4-6% at 6x6 to
  8x8, 17% at 4x4; "valid" padding and strides loosen it further (13% and 32% at 6x6,
  the strided map being bounded by the unstrided one). Cost: `C F` FFTs of the padded
  kernel and
  `10 n1 n2 / 2` complex `c x c` matmuls, c = min(C, F).
  """
  kernel_height, kernel_width, channels, filters = (int(d) for d in kernel.shape)
  n1, n2 = input_size[0] + kernel_height - 1, input_size[1] + kernel_width - 1
  taps = tf.transpose(tf.cast(kernel, tf.float64), (2, 3, 0, 1))
  taps = tf.pad(taps, ((0, 0), (0, 0), (0, n1 - kernel_height), (0, n2 - kernel_width)))
  blocks = tf.reshape(tf.transpose(tf.signal.rfft2d(taps), (2, 3, 0, 1)),
                      (-1, channels, filters))
  gram = (tf.matmul(blocks, blocks, adjoint_b=True) if channels <= filters
          else tf.matmul(blocks, blocks, adjoint_a=True))
  tiny = tf.constant(TINY_NORM, tf.float64)

  def frobenius(m):
    return tf.maximum(tf.sqrt(tf.reduce_sum(tf.math.real(m * tf.math.conj(m)),
                                            axis=(-2, -1))), tiny)

  def body(j, m, log_bound):
    m = tf.matmul(m, m)
    norm = frobenius(m)
    weight = tf.pow(tf.constant(0.5, tf.float64), tf.cast(j + 2, tf.float64))
    log_bound += tf.math.log(norm) * weight
    return j + 1, m / tf.cast(norm[:, None, None], m.dtype), log_bound

  scale = frobenius(gram)
  # A loop, not unrolled: XLA's simplifier blows up on ten unrolled squarings of 1x1
  # complex blocks (a single-filter convolution).
  _, _, log_bound = tf.while_loop(
      lambda j, *_: j < FOURIER_SQUARINGS, body,
      (tf.constant(0), gram / tf.cast(scale[:, None, None], gram.dtype),
       0.5 * tf.math.log(scale)))
  return tf.cast(tf.exp(tf.reduce_max(log_bound)), kernel.dtype)


def matrix_gram(matrix):
  """(Gram on the smaller side, lift to the input side) of the map `A x = matrix^T x`.

  `matrix` is `[in, out]`. For in <= out the Gram is `A^T A = matrix matrix^T` and its
  eigenvectors are input-side already; otherwise it is `A A^T = matrix^T matrix` and an
  output-side x lifts to `A^T x = matrix x`.
  """
  if matrix.shape[0] <= matrix.shape[1]:
    return tf.matmul(matrix, matrix, transpose_b=True), lambda x: x
  return (tf.matmul(matrix, matrix, transpose_a=True),
          lambda x: tf.linalg.matvec(matrix, x))
