"""Jacobian traces and log-determinants: exact (dense Jacobian) and Hutchinson's estimator.

Every function here takes a batch `x` of shape `[N, *event]` and a callable acting row by
row on it (`f(x)` has the shape of `x`, row n of `f(x)` depends on row n of `x` only), and
returns one number per row, shape `[N]`. The event is every non-batch axis: vectors
`[N, D]` and images `[N, H, W, C]` alike, with D the product of the event dimensions.
The rank and the event dimensions must be static; the batch size may be dynamic.

Products with the Jacobian J = df/dx come in two modes, and give the same numbers:

```none
reverse mode (default)   v^T J: one vector-Jacobian product (vjp) through one recorded
                         pass of f; cost about 2 passes of f
forward mode (`jvp`)     J v: a caller-supplied `jvp(x, tangents)` returning f(x) and
                         the products with K stacked tangents at once, about 1 + K
                         passes of f (the nets of `tfp_flows.nets` provide one)
```

v^T J v = v^T (J v), so the Hutchinson estimate is the same either way, and the exact
trace sums the diagonal of J from its rows (reverse) or its columns (forward).

Costs of the estimators (D products, or 1):

```none
exact_jacobian_log_det   D products (one batched vjp over D copies of each row), O(N D^2)
                         memory, plus an O(N D^3) QR factorisation
exact_trace              D products, O(N D^2) memory
hutchinson_trace         1 product, O(N D) memory; unbiased, variance as in
                         `tfp_flows.numerics.probes.hutchinson_probes`
```

Randomness enters only through probes that the caller draws (`tfp_flows.numerics.probes`)
from an explicit stateless seed, so every function is deterministic given its inputs and
compiles under `tf.function(jit_compile=True)`.

References:
  Hutchinson, A stochastic estimator of the trace of the influence matrix for Laplacian
  smoothing splines (1990).
  Grathwohl et al., FFJORD, https://arxiv.org/abs/1810.01367 (Sec. 3.1).
"""

import math

import tensorflow as tf

from tfp_flows.numerics import checks
from tfp_flows.numerics import probes

__all__ = ["TRACE_METHODS", "dense_jacobian", "exact_jacobian_log_det", "exact_trace",
           "flatten_batch", "hutchinson_trace", "row_dot", "trace_and_norm"]

TRACE_METHODS = ("exact", "hutchinson")


def trace_and_norm(f, x, method="exact", probe=None, jvp=None, row_args=(),
                   with_norm=False):
  """`(f(x), tr J, |J|_F^2)` per row, exact or estimated with one probe per row.

  ```none
  "exact":       tr J = sum_i J_ii,                |J|_F^2 = sum_ij J_ij^2
  "hutchinson":  tr J ~ v^T J v,  E = tr J,        |J|_F^2 ~ |v^T J|^2 (|J v|^2 forward),
                 E[v v^T] = I                      E = |J|_F^2
  ```

  Args:
    f: callable `f(x, *row_args)` mapping `[N, *event]` to `[N, *event]` row by row.
    x: tensor `[N, *event]` with static rank and event dimensions.
    method: "exact" or "hutchinson".
    probe: tensor shaped like `x`, for "hutchinson".
    jvp: optional `jvp(x, tangents, *row_args) -> (f(x), J v)` with tangents
      `[K, N, *event]` and the products stacked alike (forward mode). It must agree with
      `f`. Without it the products are reverse mode.
    row_args: tensors `[N, ...]` passed to `f` (and `jvp`) after `x`, row for row
      (repeated with `x`'s rows where the exact trace copies them), e.g. a time.
    with_norm: also return the squared Frobenius norm (else None).

  Returns:
    `(f(x), trace, norm)`, each of the last two `[N]` (norm None unless `with_norm`).
  """
  checks.one_of("method", method, TRACE_METHODS)
  x = tf.convert_to_tensor(x)
  if method == "exact":
    if jvp is None:
      fx, jacobian = dense_jacobian(f, x, row_args)
    else:
      size = _event_size(x)
      units = tf.reshape(tf.eye(size, dtype=x.dtype), [size, 1] + x.shape[1:].as_list())
      tangents = tf.broadcast_to(units, tf.concat([[size], tf.shape(x)], 0))
      fx, columns = jvp(x, tangents, *row_args)
      # columns[i] = J e_i; J[n]^T has them as rows, with the same trace and norm.
      jacobian = tf.transpose(tf.reshape(columns, [size, -1, size]), [1, 0, 2])
    norm = tf.reduce_sum(tf.square(jacobian), axis=[1, 2]) if with_norm else None
    return fx, tf.linalg.trace(jacobian), norm
  if probe is None:
    raise ValueError("method='hutchinson' needs a probe shaped like x (see "
                     "tfp_flows.numerics.probes).")
  probe = tf.convert_to_tensor(probe, dtype=x.dtype)
  probes.check_batched(x)
  if jvp is None:
    with tf.GradientTape(watch_accessed_variables=False) as tape:
      tape.watch(x)
      fx = f(x, *row_args)
    product = tape.gradient(fx, x, output_gradients=probe,
                            unconnected_gradients=tf.UnconnectedGradients.ZERO)
  else:
    fx, products = jvp(x, probe[None], *row_args)
    product = products[0]
  norm = row_dot(product, product) if with_norm else None
  return fx, row_dot(product, probe), norm


def exact_trace(f, x, return_output=False):
  """tr(J_f(x)) per row, from the diagonal of the dense Jacobian.

  ```none
  tr J[n] = sum_i e_i^T J[n] e_i = sum_i d f(x)[n]_i / d x[n]_i
  ```

  Cost: D vjps (one batched vjp over D copies of each row) and O(N D^2) memory. For
  continuous flows on small D this gives the exact log-density (FFJORD's "brute force"
  divergence); for large D use `hutchinson_trace`.

  Args:
    f: callable mapping `[N, *event]` to `[N, *event]`, row by row.
    x: tensor `[N, *event]` with static rank and event dimensions.
    return_output: also return f(x), computed in the same pass.

  Returns:
    `[N]` traces, or `(f(x), trace)` if `return_output`.
  """
  fx, trace, _ = trace_and_norm(f, x, "exact")
  return (fx, trace) if return_output else trace


def hutchinson_trace(f, x, probe, return_output=False):
  """Hutchinson's estimate v^T J_f(x) v of tr(J_f(x)) per row, from one vjp.

  ```none
  estimate[n] = <v[n]^T J[n], v[n]>      E_v[estimate] = tr J[n]  when E[v v^T] = I
  ```

  The estimate stays differentiable: under an outer `tf.GradientTape` its gradient is an
  unbiased estimate of the gradient of the trace (as FFJORD trains).

  Args:
    f: callable mapping `[N, *event]` to `[N, *event]`, row by row.
    x: tensor `[N, *event]` with static rank.
    probe: tensor shaped like `x`, e.g. from `probes.hutchinson_probes(tf.shape(x), seed)`.
    return_output: also return f(x), computed in the same pass.

  Returns:
    `[N]` estimates, or `(f(x), estimate)` if `return_output`.
  """
  fx, estimate, _ = trace_and_norm(f, x, "hutchinson", probe=probe)
  return (fx, estimate) if return_output else estimate


def exact_jacobian_log_det(g, x, return_output=False):
  """log|det(I + J_g(x))| per row, from the dense Jacobian.

  ```none
  J[n] = d g(x)[n] / d x[n]          (D x D, the event flattened)
  log|det(I + J[n])| = sum_i log|R_ii|,   Q R = I + J[n]  (Householder QR)
  ```

  Cost: the Jacobian takes D vjps (one batched vjp over D copies of each row) and
  O(N D^2) memory, the factorisation O(N D^3): use it for small D (toy densities,
  tests, evaluation of small models). The QR factorisation replaces
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
  gx, jacobian = dense_jacobian(g, x)
  size = jacobian.shape[-1]
  r = tf.linalg.qr(tf.eye(size, dtype=jacobian.dtype) + jacobian)[1]
  log_det = tf.reduce_sum(tf.math.log(tf.abs(tf.linalg.diag_part(r))), axis=-1)
  return (gx, log_det) if return_output else log_det


def dense_jacobian(f, x, row_args=()):
  """`(f(x), J)` with J `[N, D, D]` the row-wise Jacobian of the flattened event.

  D copies of each row (and of each `row_args` row) and one vjp with the D unit vectors
  give J's rows. Not `batch_jacobian`: its pfor graph, differentiated once more
  (training through a log-det), made XLA recompile on every call (0.1 steps/s, 2-D
  residual flow).

  Args:
    f: callable `f(x, *row_args)`, row by row.
    x: tensor `[N, *event]` with static rank and event dimensions.
    row_args: tensors `[N, ...]` passed to `f` after `x`.
  """
  x = tf.convert_to_tensor(x)
  size = _event_size(x)
  event = x.shape[1:].as_list()
  copies = tf.repeat(x, size, axis=0)
  with tf.GradientTape(watch_accessed_variables=False) as tape:
    tape.watch(copies)
    f_copies = f(copies, *[tf.repeat(arg, size, axis=0) for arg in row_args])
  units = tf.tile(tf.eye(size, dtype=x.dtype), tf.stack([tf.shape(x)[0], 1]))
  rows = tape.gradient(f_copies, copies, output_gradients=tf.reshape(units, [-1] + event),
                       unconnected_gradients=tf.UnconnectedGradients.ZERO)
  return f_copies[::size], tf.reshape(rows, [-1, size, size])


def row_dot(a, b):
  """<a[n], b[n]> over all non-batch axes: `[N, *event] x [N, *event] -> [N]`."""
  return tf.reduce_sum(a * b, axis=list(range(1, a.shape.rank)))


def _event_size(x):
  """D, the static number of entries of one row; ValueError if unknown."""
  probes.check_batched(x)
  if not x.shape[1:].is_fully_defined():
    raise ValueError(f"The event dimensions of x must be static; got shape {x.shape}.")
  return math.prod(x.shape[1:].as_list())


def flatten_batch(x, event_ndims):
  """`(rows, batch_shape)`: `x` `[*batch, *event]` as `[N, *event]` rows and its batch shape.

  The estimators and solvers here take one batch axis; bijectors see any batch shape.
  The event dimensions keep their static sizes.
  """
  shape = tf.shape(x)
  batch_ndims = tf.rank(x) - event_ndims
  rows = tf.reshape(x, tf.concat([[-1], shape[batch_ndims:]], 0))
  rows.set_shape([None] + x.shape[x.shape.rank - event_ndims:].as_list())
  return rows, shape[:batch_ndims]
