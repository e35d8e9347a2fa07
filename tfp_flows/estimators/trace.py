"""Jacobian traces and log-determinants: exact (dense Jacobian) and Hutchinson's estimator.

Every function here takes a batch `x` of shape `[N, *event]` and a callable acting row by
row on it (`f(x)` has the shape of `x`, row n of `f(x)` depends on row n of `x` only), and
returns one number per row, shape `[N]`. The event is every non-batch axis: vectors
`[N, D]` and images `[N, H, W, C]` alike, with D the product of the event dimensions.
The rank and the event dimensions must be static; the batch size may be dynamic.

Costs, in vector-Jacobian products (vjps, one reverse pass through f each, about the cost
of one forward pass):

```none
exact_jacobian_log_det   D vjps (one vjp over D copies of each row), O(N D^2)
                         memory, plus an O(N D^3) QR factorisation
exact_trace              D vjps, O(N D^2) memory
hutchinson_trace         1 vjp, O(N D) memory; unbiased, variance below
```

Randomness enters only through probes that the caller draws with `hutchinson_probes`
from an explicit stateless seed, so every function is deterministic given its inputs and
compiles under `tf.function(jit_compile=True)`.

References:
  Hutchinson, A stochastic estimator of the trace of the influence matrix for Laplacian
  smoothing splines (1990).
  Grathwohl et al., FFJORD, https://arxiv.org/abs/1810.01367 (Sec. 3.1).
"""

import math

import tensorflow as tf

__all__ = ["content_keyed_probes", "exact_jacobian_log_det", "exact_trace",
           "hutchinson_probes", "hutchinson_trace"]

PROBE_DISTRIBUTIONS = ("rademacher", "normal")
# Philox integer draws are bit-identical in eager mode, graph mode and under XLA (TF's
# default "auto_select" need not be); its float draws are not (XLA converts bits to floats
# differently), so floats are built from integer bits here.
RNG_ALGORITHM = "philox"


def hutchinson_probes(shape, seed, dtype=tf.float32, distribution="rademacher"):
  """Random probes v with E[v] = 0 and E[v v^T] = I, from a stateless seed.

  ```none
  rademacher: v_i = +-1 with probability 1/2 each
  normal:     v_i ~ N(0, 1)
  ```

  For a matrix A, v^T A v is an unbiased estimate of tr(A) under either distribution.
  Its variance is 2 sum_{i != j} ((A_ij + A_ji) / 2)^2 for Rademacher probes and
  2 ||(A + A^T) / 2||_F^2 for normal ones: Rademacher never does worse, and removes the
  diagonal's contribution entirely, so it is the default.

  Args:
    shape: the probe shape, usually `tf.shape(x)` (one probe per row).
    seed: stateless seed, an int32/int64 tensor of shape [2].
    dtype: floating dtype of the probes.
    distribution: "rademacher" or "normal".

  Returns:
    A tensor of `shape` and `dtype`.

  Raises:
    ValueError: unknown `distribution` or a non-floating `dtype`.
  """
  dtype = tf.as_dtype(dtype)
  if not dtype.is_floating:
    raise ValueError(f"Probes need a floating dtype; got {dtype!r}.")
  if distribution == "rademacher":
    bits = tf.random.stateless_uniform(shape, seed, minval=0, maxval=2, dtype=tf.int32,
                                        alg=RNG_ALGORITHM)
    return tf.cast(2 * bits - 1, dtype)
  if distribution == "normal":
    # Box-Muller from integer bits, not tf.random.stateless_normal (see _uniform_float64).
    uniforms = _uniform_float64(tf.concat([tf.cast(shape, tf.int32), [2]], axis=0), seed)
    radius = tf.sqrt(-2.0 * tf.math.log1p(-uniforms[..., 0]))  # 1 - u in (0, 1]
    return tf.cast(radius * tf.cos(2.0 * math.pi * uniforms[..., 1]), dtype)
  raise ValueError(f"distribution must be one of {PROBE_DISTRIBUTIONS}; "
                   f"got {distribution!r}.")


# The Mersenne prime 2^31 - 1: products of a 32-bit word and a residue fit in int64.
_HASH_PRIME = 2**31 - 1
# Sign, exponent and the top 8 mantissa bits of a float32 (the low 15 bits cleared).
_KEY_MASK = -(2**15)


def content_keyed_probes(x, seed):
  """Rademacher probes, one per row of `x`, that depend on the row's values, not its index.

  `hutchinson_probes(tf.shape(x), seed)` gives row n the n-th probe of the stream, so a
  point's estimate changes with its position in the batch. Here each row's probe is a
  function of the row's values and the seed only: the same point gets the same probe
  alone or in any batch, and distinct points get unrelated probes, so an evaluation
  with a fixed seed is deterministic per point. The values are keyed at 8 significant
  bits (float32 with the low 15 mantissa bits cleared): round-off-level differences (an
  exported graph's kernels, another batch size's matmul blocking) then change the
  probe only when they straddle a rounding boundary, with probability about
  D * (ulps of difference) / 2^15 per row. With the seed drawing the hash family
  (p = 2^31 - 1, w_i the keyed words of the row, j the output positions):

  ```none
  key      = sum_i (w_i m_i mod p) mod p                       m_i uniform in [1, p)
  v_j      = +1 if (key a_j + b_j mod p) is even, else -1      a_j, b_j uniform in [0, p)
  ```

  For a fixed key the v_j are independent and fair up to 1/p, so E[v v^T] = I over the
  family, as Hutchinson's estimator needs; two rows share a probe only if they agree
  to 8 significant bits everywhere or their keys collide (probability 1/p). Exact
  integer arithmetic: eager mode, graphs and XLA give the same probes.

  Args:
    x: tensor `[N, *event]` with static event dimensions, float16/32/64.
    seed: stateless seed, an int32/int64 tensor of shape [2].

  Returns:
    `[N, *event]` probes of `x.dtype`, entries +-1.
  """
  x = tf.convert_to_tensor(x)
  _check_batched(x)
  if not x.dtype.is_floating:
    raise ValueError(f"content_keyed_probes needs floating x; got {x.dtype!r}.")
  size = math.prod(x.shape[1:])
  rows = tf.reshape(tf.cast(x, tf.float32), [-1, size])
  # -0.0 and 0.0 are the same point: give them the same bits.
  rows = tf.where(tf.equal(rows, 0.0), tf.zeros_like(rows), rows)
  words = tf.bitwise.bitwise_and(tf.bitcast(rows, tf.int32), _KEY_MASK)
  words = tf.bitwise.bitwise_and(tf.cast(words, tf.int64), 0xFFFFFFFF)
  key_seed, sign_seed = tf.unstack(tf.random.experimental.stateless_split(
      seed, num=2, alg=RNG_ALGORITHM))
  multipliers = tf.random.stateless_uniform([size], key_seed, minval=1,
                                            maxval=_HASH_PRIME, dtype=tf.int64,
                                            alg=RNG_ALGORITHM)
  key = tf.math.floormod(tf.reduce_sum(tf.math.floormod(words * multipliers, _HASH_PRIME),
                                       axis=1, keepdims=True), _HASH_PRIME)
  a, b = tf.unstack(tf.random.stateless_uniform([2, size], sign_seed, minval=0,
                                                maxval=_HASH_PRIME, dtype=tf.int64,
                                                alg=RNG_ALGORITHM))
  parity = tf.math.floormod(tf.math.floormod(key * a + b, _HASH_PRIME), 2)
  return tf.reshape(tf.cast(1 - 2 * parity, x.dtype), tf.shape(x))


def exact_jacobian_log_det(g, x, return_output=False):
  """log|det(I + J_g(x))| per row, from the dense Jacobian.

  ```none
  J[n] = d g(x)[n] / d x[n]          (D x D, the event flattened)
  log|det(I + J[n])| = sum_i log|R_ii|,   Q R = I + J[n]  (Householder QR)
  ```

  Cost: the Jacobian takes D vjps (one per output coordinate, one batched vjp over D
  copies of each row) and O(N D^2) memory, the factorisation O(N D^3): use it for small D
  (toy densities, tests, evaluation of small models). The QR factorisation replaces
  `tf.linalg.slogdet` because XLA has no kernel for `LogMatrixDeterminant`; QR is
  backward stable, compiles under XLA, and has a gradient (for a square I + J it is
  (I + J)^{-T}, the same as slogdet's).

  Args:
    g: callable mapping `[N, *event]` to `[N, *event]`, row by row.
    x: tensor `[N, *event]` with static rank and event dimensions.
    return_output: also return g(x), computed in the same pass.

  Returns:
    `[N]` log-determinants, or `(g(x), log_det)` if `return_output`.
  """
  gx, jacobian = _dense_jacobian(g, x)
  size = jacobian.shape[-1]
  r = tf.linalg.qr(tf.eye(size, dtype=jacobian.dtype) + jacobian)[1]
  log_det = tf.reduce_sum(tf.math.log(tf.abs(tf.linalg.diag_part(r))), axis=-1)
  return (gx, log_det) if return_output else log_det


def exact_trace(f, x, return_output=False):
  """tr(J_f(x)) per row, from the diagonal of the dense Jacobian.

  ```none
  tr J[n] = sum_i e_i^T J[n] e_i = sum_i d f(x)[n]_i / d x[n]_i
  ```

  Cost: D vjps (one batched vjp over D copies of each row) and O(N D^2) memory. For continuous flows
  on small D, where this exact trace gives the exact log-density (FFJORD's "brute force"
  divergence); for large D use `hutchinson_trace`.

  Args:
    f: callable mapping `[N, *event]` to `[N, *event]`, row by row.
    x: tensor `[N, *event]` with static rank and event dimensions.
    return_output: also return f(x), computed in the same pass.

  Returns:
    `[N]` traces, or `(f(x), trace)` if `return_output`.
  """
  fx, jacobian = _dense_jacobian(f, x)
  trace = tf.linalg.trace(jacobian)
  return (fx, trace) if return_output else trace


def hutchinson_trace(f, x, probe, return_output=False):
  """Hutchinson's estimate v^T J_f(x) v of tr(J_f(x)) per row, from one vjp.

  ```none
  estimate[n] = <v[n]^T J[n], v[n]>      E_v[estimate] = tr J[n]  when E[v v^T] = I
  ```

  v^T J is one reverse-mode product through f (it reuses the forward pass of f, which is
  why this is cheaper than a forward-mode J v that would re-run f). The estimate stays
  differentiable: under an outer `tf.GradientTape` its gradient is an unbiased estimate
  of the gradient of the trace (as FFJORD trains).

  Args:
    f: callable mapping `[N, *event]` to `[N, *event]`, row by row.
    x: tensor `[N, *event]` with static rank.
    probe: tensor shaped like `x`, e.g. from `hutchinson_probes(tf.shape(x), seed)`.
    return_output: also return f(x), computed in the same pass.

  Returns:
    `[N]` estimates, or `(f(x), estimate)` if `return_output`.
  """
  x = tf.convert_to_tensor(x)
  probe = tf.convert_to_tensor(probe, dtype=x.dtype)
  _check_batched(x)
  with tf.GradientTape(watch_accessed_variables=False) as tape:
    tape.watch(x)
    fx = f(x)
  vjp = tape.gradient(fx, x, output_gradients=probe,
                      unconnected_gradients=tf.UnconnectedGradients.ZERO)
  estimate = _row_dot(vjp, probe)
  return (fx, estimate) if return_output else estimate


def _row_dot(a, b):
  """<a[n], b[n]> over all non-batch axes: `[N, *event] x [N, *event] -> [N]`."""
  return tf.reduce_sum(a * b, axis=list(range(1, a.shape.rank)))


def _uniform_float64(shape, seed):
  """Stateless float64 uniforms on [0, 1 - 2^-53], the same in eager mode and under XLA.

  53 random bits from two uint32 words: (a >> 6) * 2^27 + (b >> 5), divided by 2^53,
  every step exact in float64. The two words of an element sit next to each other (a
  trailing axis), so element i uses words 2i and 2i + 1 of the stream whatever the shape:
  a row's probe does not change with the batch size. Shared with `log_det_series` (the
  roulette count).
  """
  shape = tf.concat([tf.cast(shape, tf.int32), [2]], axis=0)
  words = tf.random.stateless_uniform(shape, seed, minval=None, maxval=None, dtype=tf.uint32,
                                      alg=RNG_ALGORITHM)
  high = tf.cast(tf.bitwise.right_shift(words[..., 0], 6), tf.float64)
  low = tf.cast(tf.bitwise.right_shift(words[..., 1], 5), tf.float64)
  return (high * 2.0**27 + low) * 2.0**-53


def _check_batched(x):
  if x.shape.rank is None or x.shape.rank < 2:
    raise ValueError("x must have a static rank of at least 2, [batch, *event]; got shape "
                     f"{x.shape}.")


def _dense_jacobian(f, x):
  """`(f(x), J)` with J `[N, D, D]` the row-wise Jacobian of the flattened event.

  D copies of each row and one vjp with the D unit vectors give J's rows. Not
  `batch_jacobian`: its pfor graph, differentiated once more (training through a
  log-det), made XLA recompile on every call (0.1 steps/s, 2-D residual flow).
  """
  x = tf.convert_to_tensor(x)
  x_rows, to_rows, to_events = _as_rows(x)
  size = x_rows.shape[-1]
  copies = tf.repeat(x_rows, size, axis=0)
  with tf.GradientTape(watch_accessed_variables=False) as tape:
    tape.watch(copies)
    f_copies = to_rows(f(tf.reshape(copies, [-1] + x.shape[1:].as_list())))
  units = tf.tile(tf.eye(size, dtype=x.dtype), tf.stack([tf.shape(x_rows)[0], 1]))
  rows = tape.gradient(f_copies, copies, output_gradients=units,
                       unconnected_gradients=tf.UnconnectedGradients.ZERO)
  return to_events(f_copies[::size]), tf.reshape(rows, [-1, size, size])


def _as_rows(x):
  """x as `[N, D]` rows, with the maps between row and event layouts.

  The dense Jacobian needs one event axis; flattening makes any event rank one.
  """
  _check_batched(x)
  event_shape = x.shape[1:]
  if not event_shape.is_fully_defined():
    raise ValueError(f"The event dimensions of x must be static; got shape {x.shape}.")
  size = math.prod(event_shape.as_list())
  batch = tf.shape(x)[:1]
  shape = tf.concat([batch, event_shape.as_list()], axis=0)

  def to_rows(t):
    return tf.reshape(t, [-1, size])

  def to_events(t):
    return tf.reshape(t, shape)

  return to_rows(x), to_rows, to_events
