"""Invertible residual blocks (i-ResNet / Residual Flows) as a TFP bijector."""

import tensorflow as tf
import tensorflow_probability as tfp

from tfp_flows.bijectors import _log_det_cache
from tfp_flows.estimators import log_det_series

__all__ = ["ResidualBlock", "fixed_point_solve"]

tfb = tfp.bijectors
_METHODS = ("exact", "series", "russian_roulette")
_GRADIENTS = ("neumann", "backprop")


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
    return tf.reduce_any(change > tolerance)

  def body(i, y, change):
    y_next = z - g(y)
    return i + 1, y_next, tf.reduce_max(tf.abs(y_next - y), axis=axes)

  initial_change = tf.fill(tf.shape(z)[:1], tf.constant(float("inf"), z.dtype))
  num_iterations, y, change = tf.while_loop(
      cond, body, (tf.constant(0), z, initial_change), maximum_iterations=max_iterations)
  return y, change <= tolerance, num_iterations


class ResidualBlock(tfb.Bijector):
  """Invertible residual block: the residual map `r(y) = y + g(y)` with Lip(g) < 1.

  The residual map is the data -> base direction (TFP's `inverse`), so density
  evaluation (`log_prob`) is the cheap direction, one pass of g; sampling (TFP's
  `forward`) inverts it by fixed-point iteration:

  ```none
  inverse  (data y -> base z):  z = y + g(y)                     one pass of g
  forward  (base z -> data y):  y <- z - g(y), repeated           `fixed_point_solve`
  log-det:  log|det dz/dy| = log det(I + J_g(y))
                           = sum_{k>=1} (-1)^{k+1} / k tr(J_g(y)^k)
  ```

  The Lipschitz bound makes r invertible and I + J_g positive definite in the sense
  that its eigenvalues lie in the disc of radius L around 1, so the log-det series
  converges. `log_det` picks the estimator (`tfp_flows.estimators.estimate_log_det`):

  * "exact": dense Jacobian, D vector-Jacobian products per row, O(N D^2) memory;
    exact and deterministic, for small events (any D, not only 2-D).
  * "series": `num_terms` terms of the series with one Hutchinson probe per row;
    biased by at most `D L^(n+1) / ((n+1)(1 - L))`, variance from the probe.
  * "russian_roulette": `n_exact_terms` terms always plus a randomly truncated tail
    reweighted by survival probabilities: unbiased (Chen et al. 2019); cost
    `n_exact_terms + E[N]` vjps, variance growing with L.

  `gradient="neumann"` differentiates the series by the Neumann-series estimator of
  Chen et al. 2019 (memory flat in the number of terms); "backprop" differentiates
  through the series terms (memory grows with them). Stochastic estimators draw their
  probes and counts from the stateless `seed` ([2] int tensor) given at construction;
  `tfp_flows.layers.ResidualBlock` draws a fresh one per training step.

  Non-convergence of the fixed point is never silent: with `validate_args=True`
  `forward` raises `InvalidArgumentError`; otherwise the rows that did not converge
  within `max_iterations` come back as NaN (other rows are unaffected).

  #### References

  [1]: Behrmann, Grathwohl, Chen, Duvenaud, Jacobsen. Invertible Residual Networks.
       https://arxiv.org/abs/1811.00995
  [2]: Chen, Behrmann, Duvenaud, Jacobsen. Residual Flows for Invertible Generative
       Modeling. https://arxiv.org/abs/1906.02735
  """

  def __init__(self, residual_fn, event_ndims=1, log_det="exact", gradient="neumann",
               seed=None, num_terms=10, n_exact_terms=2, distribution="geometric",
               tolerance=1e-6, max_iterations=100, content_keyed_probes=False,
               validate_args=False, dtype=tf.float32, name="residual_block"):
    """Creates the block.

    Args:
      residual_fn: callable g mapping `[N, *event]` to `[N, *event]` with Lip(g) < 1
        (e.g. spectrally normalised layers with 1-Lipschitz activations).
      event_ndims: rank of one event (1 vectors, 3 images).
      log_det: "exact", "series" or "russian_roulette" (see the class docstring).
      gradient: "neumann" or "backprop" for the stochastic estimators.
      seed: stateless seed `[2]` for "series" and "russian_roulette".
      num_terms: terms of "series".
      n_exact_terms: terms the roulette always computes.
      distribution: "geometric" or "poisson", the roulette's count distribution.
      tolerance: fixed-point tolerance (largest change per row in the last step,
        relative to `max(1, max|z_row|)`; see `fixed_point_solve`).
      max_iterations: fixed-point iteration cap.
      content_keyed_probes: stochastic estimators draw each row's probe from its values
        (`tfp_flows.estimators.trace.content_keyed_probes`), not its batch index, so a
        point's log-det does not depend on the batch it is in.
      validate_args: raise on non-convergence and non-finite inputs.
      dtype: float dtype.
      name: bijector name.

    Raises:
      ValueError: for bad arguments, or a stochastic estimator without a seed.
    """
    parameters = dict(locals())
    if not callable(residual_fn):
      raise ValueError(f"residual_fn must be callable; got {residual_fn!r}.")
    if log_det not in _METHODS:
      raise ValueError(f"log_det must be one of {_METHODS}; got {log_det!r}.")
    if gradient not in _GRADIENTS:
      raise ValueError(f"gradient must be one of {_GRADIENTS}; got {gradient!r}.")
    if log_det != "exact" and seed is None:
      raise ValueError(f"log_det={log_det!r} is stochastic: pass a stateless seed (a [2] "
                       "int tensor), or use log_det='exact'.")
    if int(event_ndims) < 1:
      raise ValueError(f"event_ndims must be at least 1; got {event_ndims!r}.")
    if not tolerance > 0 or int(max_iterations) < 1:
      raise ValueError("tolerance must be positive and max_iterations at least 1; got "
                       f"{tolerance!r} and {max_iterations!r}.")
    self._g = residual_fn
    self._log_det = log_det
    self._gradient = gradient
    self._seed = seed
    self._num_terms = int(num_terms)
    self._n_exact_terms = int(n_exact_terms)
    self._distribution = distribution
    self._tolerance = float(tolerance)
    self._max_iterations = int(max_iterations)
    self._content_keyed_probes = bool(content_keyed_probes)
    super().__init__(forward_min_event_ndims=int(event_ndims), dtype=tf.as_dtype(dtype),
                     validate_args=validate_args, parameters=parameters, name=name)

  @property
  def log_det_method(self):
    return self._log_det

  def _as_batch(self, x):
    """Flattens batch dims to one so the estimators see `[N, *event]`."""
    event_ndims = self.forward_min_event_ndims
    shape = tf.shape(x)
    flat = tf.reshape(x, tf.concat([[-1], shape[tf.rank(x) - event_ndims:]], 0))
    flat.set_shape([None] + x.shape[x.shape.rank - event_ndims:].as_list())
    return flat, shape[:tf.rank(x) - event_ndims]

  def _residual_and_log_det(self, y):
    if self.validate_args:
      y = tf.debugging.assert_all_finite(y, "ResidualBlock: input is not finite.")
    flat, batch_shape = self._as_batch(y)
    g_y, log_det = log_det_series.estimate_log_det(
        self._g, flat, method=self._log_det, gradient=self._gradient, seed=self._seed,
        num_terms=self._num_terms, n_exact_terms=self._n_exact_terms,
        distribution=self._distribution, content_keyed_probes=self._content_keyed_probes,
        return_output=True)
    z = y + tf.reshape(g_y, tf.shape(y))
    return z, tf.reshape(log_det, batch_shape)

  def _inverse(self, y, **kwargs):
    z, ildj = self._residual_and_log_det(y)
    _log_det_cache.remember_inverse_log_det(self, y, ildj, kwargs)
    return z

  def _inverse_log_det_jacobian(self, y):
    return self._residual_and_log_det(y)[1]

  def _forward(self, z):
    flat, _ = self._as_batch(z)
    y, converged, _ = fixed_point_solve(self._g, flat, self._tolerance,
                                        self._max_iterations)
    if self.validate_args:
      with tf.control_dependencies([tf.debugging.assert_equal(
          converged, True, message=(
              f"ResidualBlock: the fixed-point inverse did not reach tolerance "
              f"{self._tolerance} within {self._max_iterations} iterations; raise "
              "max_iterations or lower the Lipschitz coefficient."))]):
        y = tf.identity(y)
    else:
      mask = tf.reshape(converged, [-1] + [1] * (y.shape.rank - 1))
      y = tf.where(mask, y, tf.constant(float("nan"), y.dtype))
    return tf.reshape(y, tf.shape(z))

  def _forward_log_det_jacobian(self, z):
    return -self._residual_and_log_det(self.forward(z))[1]
