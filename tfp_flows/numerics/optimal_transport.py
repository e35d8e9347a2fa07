"""Minibatch optimal-transport pairing (entropic, Sinkhorn) for flow matching."""

import tensorflow as tf

__all__ = ["sinkhorn_pairing"]


def sinkhorn_pairing(x, z, seed, num_iterations=100, relative_epsilon=0.05):
  """Base points re-drawn from the minibatch's entropic OT plan, one per data row.

  With the squared-distance cost C_ij = |x_i - z_j|^2, uniform marginals 1/n and
  regularisation eps = relative_epsilon * mean(C), Sinkhorn's iterations in the log
  domain find potentials f, g with

  ```none
  P_ij = exp(f_i + g_j - C_ij / eps),      sum_j P_ij = sum_i P_ij = 1/n at convergence
  f_i <- log(1/n) - logsumexp_j(g_j - C_ij / eps)
  g_j <- log(1/n) - logsumexp_i(f_i - C_ij / eps)
  ```

  Row i of the plan, normalised, is the distribution
  of data point i's partner, from which one partner is drawn (Tong et al. 2023). The
  cost is a constant to the gradient. O(n^2) memory per iteration.

  Args:
    x: `[n, *event]` data points.
    z: `[n, *event]` base points.
    seed: stateless `[2]` seed of the partner draw.
    num_iterations: Sinkhorn iterations.
    relative_epsilon: eps as a fraction of the mean cost.

  Returns:
    `[n, *event]`: row i is the base point paired with `x[i]`.
  """
  flat_x = tf.reshape(x, [tf.shape(x)[0], -1])
  flat_z = tf.reshape(z, [tf.shape(z)[0], -1])
  cost = tf.reduce_sum(tf.square(flat_x[:, None, :] - flat_z[None, :, :]), axis=-1)
  cost = tf.stop_gradient(cost)
  epsilon = relative_epsilon * tf.reduce_mean(cost)
  log_kernel = -cost / epsilon
  n = tf.cast(tf.shape(cost)[0], cost.dtype)
  log_marginal = -tf.math.log(n)

  def body(i, f, g):
    f = log_marginal - tf.reduce_logsumexp(log_kernel + g[None, :], axis=1)
    g = log_marginal - tf.reduce_logsumexp(log_kernel + f[:, None], axis=0)
    return i + 1, f, g

  zeros = tf.zeros(tf.shape(cost)[:1], cost.dtype)
  _, f, g = tf.while_loop(lambda i, f, g: i < num_iterations, body,
                          (tf.constant(0), zeros, zeros))
  logits = log_kernel + f[:, None] + g[None, :]
  partner = tf.random.stateless_categorical(logits, 1, seed)[:, 0]
  # A row of NaN logits draws n, out of range (a NaN data row makes the mean cost, so
  # every row, NaN). Clamped (XLA's gather clamps too), the NaN data still make the
  # loss NaN, and the training step guard reports them instead of a gather error.
  return tf.gather(z, tf.minimum(partner, tf.cast(tf.shape(z)[0] - 1, partner.dtype)))
