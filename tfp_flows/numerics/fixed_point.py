"""Fixed-point solves of `y + g(y) = z` for contractive g (the inverse of a residual block)."""

import tensorflow as tf

__all__ = ["fixed_point_solve"]


def fixed_point_solve(g, z, tolerance=1e-6, max_iterations=100):
  """Solves `y + g(y) = z` for `y` by the iteration `y <- z - g(y)` (Banach).

  With Lip(g) = L < 1 the iteration contracts: after k steps the error is at most
  `L^k / (1 - L) * |g(z)|`, so it converges linearly (faster for smaller L). A row has
  converged when its largest change in one step is at most
  `tolerance * max(1, max|z_row|)`: absolute near the origin, relative far from it,
  where float round-off alone keeps the iterate moving by an ulp of `z` (1e-5 at
  |z| ~ 100 in float32). The loop stops when every row has converged, or after
  `max_iterations` steps. Runs in a `tf.while_loop` (XLA-compilable); each step costs
  one evaluation of g.

  A row that has not converged is reported in `converged`, never hidden: callers turn it
  into NaN (and an error with `validate_args`, see `tfp_flows.numerics.checks.nan_unless`).

  Args:
    g: callable mapping `[N, *event]` to `[N, *event]`.
    z: tensor `[N, *event]`.
    tolerance: largest accepted change per row in the last step, relative to
      `max(1, max|z_row|)`.
    max_iterations: cap on the number of steps.

  Returns:
    `(y, converged, num_iterations)`: the iterate, a `[N]` bool telling which rows met
    the tolerance, and the number of steps taken.
  """
  axes = list(range(1, z.shape.rank))
  tolerance = tf.cast(tolerance, z.dtype) * tf.maximum(
      tf.ones([], z.dtype), tf.reduce_max(tf.abs(z), axis=axes))

  def cond(i, y, change):
    del i, y
    return tf.reduce_any(change > tolerance)

  def body(i, y, change):
    del change
    y_next = z - g(y)
    return i + 1, y_next, tf.reduce_max(tf.abs(y_next - y), axis=axes)

  initial_change = tf.fill(tf.shape(z)[:1], tf.constant(float("inf"), z.dtype))
  num_iterations, y, change = tf.while_loop(
      cond, body, (tf.constant(0), z, initial_change), maximum_iterations=max_iterations)
  return y, change <= tolerance, num_iterations
