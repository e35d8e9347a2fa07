"""Invertible residual blocks (i-ResNet / Residual Flows) as a TFP bijector."""

import tensorflow as tf

from tfp_flows.bijectors import _tfp_glue
from tfp_flows.bijectors import network_bijector
from tfp_flows.numerics import aliases
from tfp_flows.numerics import checks
from tfp_flows.numerics import estimators
from tfp_flows.numerics import fixed_point
from tfp_flows.numerics import log_det_series
from tfp_flows.numerics import trace

__all__ = ["ResidualBlock"]



class ResidualBlock(network_bijector.NetworkBijector):
  """Invertible residual block: the residual map `r(y) = y + g(y)` with Lip(g) < 1.

  The residual map is the data -> base direction (TFP's `inverse`), so density
  evaluation (`log_prob`) is the cheap direction, one pass of g; sampling (TFP's
  `forward`) inverts it by fixed-point iteration:

  ```none
  inverse  (data y -> base z):  z = y + g(y)                     one pass of g
  forward  (base z -> data y):  y <- z - g(y), repeated           (`fixed_point_solve`)
  log-det:  log|det dz/dy| = log det(I + J_g(y))
                           = sum_{k>=1} (-1)^{k+1} / k tr(J_g(y)^k)
  ```

  The Lipschitz bound makes r invertible and I + J_g positive definite in the sense
  that its eigenvalues lie in the disc of radius L around 1, so the log-det series
  converges. `log_det` picks the estimator (`tfp_flows.numerics.log_det_series`):

  * "exact": dense Jacobian, D vector-Jacobian products per row, O(N D^2) memory;
    exact and deterministic, for small events (any D, not only 2-D).
  * "series": `num_terms` terms of the series with one Hutchinson probe per row;
    biased by at most `D L^(n+1) / ((n+1)(1 - L))`, variance from the probe.
  * "russian_roulette": `num_exact_terms` terms always plus a randomly truncated tail
    reweighted by survival probabilities: unbiased (Chen et al. 2019); cost
    `num_exact_terms + E[N]` vjps, variance growing with L.

  `gradient="neumann"` differentiates the series by the Neumann-series estimator of
  Chen et al. 2019 (memory flat in the number of terms); "backprop" differentiates
  through the series terms (memory grows with them). Stochastic estimators draw their
  probes and counts from the stateless `seed` ([2] int tensor) given at construction;
  `tfp_flows.layers.ResidualBlock` draws a fresh one per training step.

  Non-convergence of the fixed point is never silent: the rows that did not converge
  within `max_iterations` come back as NaN in every mode (other rows are unaffected),
  also under XLA; with `validate_args=True` `forward` also raises
  `InvalidArgumentError` (eagerly and in graphs: XLA compiles assertions away).

  #### References

  [1]: Behrmann, Grathwohl, Chen, Duvenaud, Jacobsen. Invertible Residual Networks.
       https://arxiv.org/abs/1811.00995
  [2]: Chen, Behrmann, Duvenaud, Jacobsen. Residual Flows for Invertible Generative
       Modeling. https://arxiv.org/abs/1906.02735
  """

  def __init__(self, residual_fn=None, event_ndims=1, log_det="exact", gradient="neumann",
               seed=None, num_terms=10, num_exact_terms=None, distribution="geometric",
               tolerance=1e-6, max_iterations=100, content_keyed_probes=False,
               validate_args=False, dtype=tf.float32, name="residual_block", *,
               make_residual_fn=None, n_exact_terms=None):
    """Creates the block.

    Args:
      residual_fn: callable g mapping `[N, *event]` to `[N, *event]` with Lip(g) < 1
        (e.g. spectrally normalised layers with 1-Lipschitz activations).
      make_residual_fn: instead of `residual_fn`, a callable returning g, called once
        at the start of every evaluation (each `forward`, `inverse` and log-det). g
        then holds the weights of that moment: a bijector kept across weight updates
        (a held `distribution`, a `tfp.vi` surrogate) stays current and differentiable
        in them, while a fixed-point solve, which calls g many times, still
        normalises the kernels once. Pass exactly one of the two.
      event_ndims: rank of one event (1 vectors, 3 images).
      log_det: "exact", "series" or "russian_roulette" (see the class docstring), or a
        resolved `tfp_flows.numerics.estimators.Estimator` (from
        `LogDetEstimator.choose`), whose method, keyed probes, fixed seed and number of
        terms take the place of `content_keyed_probes`, `seed` and `num_terms`.
      gradient: "neumann" or "backprop" for the stochastic estimators.
      seed: stateless seed `[2]` for "series" and "russian_roulette".
      num_terms: terms of "series".
      num_exact_terms: terms the roulette always computes (default 2).
      distribution: "geometric" or "poisson", the roulette's count distribution.
      tolerance: fixed-point tolerance (largest change per row in the last step,
        relative to `max(1, max|z_row|)`; see `fixed_point_solve`).
      max_iterations: fixed-point iteration cap.
      content_keyed_probes: stochastic estimators draw each row's probe from its values
        (`tfp_flows.numerics.probes.content_keyed_probes`), not its batch index, so a
        point's log-det does not depend on the batch it is in.
      validate_args: also raise on non-convergence, and on non-finite inputs.
      dtype: float dtype.
      name: bijector name.
      n_exact_terms: older alias of `num_exact_terms` (pass one of the two).

    Raises:
      ValueError: for bad arguments, or a stochastic estimator without a seed.
    """
    parameters = dict(locals())
    if (residual_fn is None) == (make_residual_fn is None):
      raise ValueError("Pass exactly one of residual_fn (g) and make_residual_fn (a "
                       "callable returning g).")
    name, given = (("residual_fn", residual_fn) if make_residual_fn is None else
                   ("make_residual_fn", make_residual_fn))
    if not callable(given):
      raise ValueError(f"{name} must be callable; got {given!r}.")
    estimator = estimators.as_estimator(
        log_det, log_det_series.LOG_DET_METHODS, keyed_probes=content_keyed_probes,
        num_terms=num_terms, name="log_det")
    checks.one_of("gradient", gradient, log_det_series.GRADIENTS)
    seed = seed if estimator.seed is None else tf.constant(estimator.seed, tf.int32)
    if estimator.method != "exact" and seed is None:
      raise ValueError(f"log_det={estimator.method!r} is stochastic: pass a stateless seed "
                       "(a [2] int tensor), or use log_det='exact'.")
    if int(event_ndims) < 1:
      raise ValueError(f"event_ndims must be at least 1; got {event_ndims!r}.")
    if not tolerance > 0 or int(max_iterations) < 1:
      raise ValueError("tolerance must be positive and max_iterations at least 1; got "
                       f"{tolerance!r} and {max_iterations!r}.")
    self._make_g = (lambda: residual_fn) if make_residual_fn is None else make_residual_fn
    self._estimator = estimator
    self._gradient = gradient
    self._seed = seed
    self._num_exact_terms = int(aliases.resolve(
        "num_exact_terms", num_exact_terms, "n_exact_terms", n_exact_terms, 2))
    self._distribution = distribution
    self._tolerance = float(tolerance)
    self._max_iterations = int(max_iterations)
    super().__init__(forward_min_event_ndims=int(event_ndims), dtype=tf.as_dtype(dtype),
                     validate_args=validate_args, parameters=parameters, name=name)

  @property
  def log_det_method(self):
    return self._estimator.method

  def _residual_and_log_det(self, y):
    if self.validate_args:
      y = tf.debugging.assert_all_finite(y, "ResidualBlock: input is not finite.")
    flat, batch_shape = trace.flatten_batch(y, self.forward_min_event_ndims)
    g_y, log_det = log_det_series.estimate_log_det(
        self._make_g(), flat, method=self._estimator.method, gradient=self._gradient,
        seed=self._seed, num_terms=self._estimator.num_terms,
        num_exact_terms=self._num_exact_terms, distribution=self._distribution,
        content_keyed_probes=self._estimator.keyed_probes, return_output=True)
    z = y + tf.reshape(g_y, tf.shape(y))
    return z, tf.reshape(log_det, batch_shape)

  def _inverse(self, y, **kwargs):
    z, ildj = self._residual_and_log_det(y)
    _tfp_glue.remember_inverse_log_det(self, y, ildj, kwargs)
    return z

  def _inverse_log_det_jacobian(self, y):
    return self._residual_and_log_det(y)[1]

  def _forward(self, z):
    flat, _ = trace.flatten_batch(z, self.forward_min_event_ndims)
    y, converged, _ = fixed_point.fixed_point_solve(self._make_g(), flat, self._tolerance,
                                                    self._max_iterations)
    y = checks.nan_unless(converged, y, self.validate_args, message=(
        f"ResidualBlock: the fixed-point inverse did not reach tolerance "
        f"{self._tolerance} within {self._max_iterations} iterations; raise "
        "max_iterations or lower the Lipschitz coefficient."))
    return tf.reshape(y, tf.shape(z))

  def _forward_log_det_jacobian(self, z):
    return -self._residual_and_log_det(self.forward(z))[1]
