"""Importance weighting with Pareto smoothing (PSIS) and its k-hat diagnostic.

A flow q fitted to an unnormalised target p~ = Z p gives importance weights
`w_i = p~(x_i) / q(x_i)` for `x_i ~ q`. They estimate

```none
Z       ~= (1/N) sum_i w_i                         (log Z: logsumexp(log w) - log N)
E_p[f]  ~= sum_i w_i f(x_i) / sum_i w_i            (self-normalised)
ESS     =  (sum_i w_i)^2 / sum_i w_i^2             (Kish's effective sample size)
```

These are unbiased (Z) or consistent (E_p[f]) but useless when q misses mass of p: the
weights then have a heavy right tail and the estimates are dominated by a few draws.
PSIS (Vehtari, Simpson, Gelman, Yao, Gabry 2024, arXiv:1507.02646) fits a generalized
Pareto distribution to the `M = min(N / 5, 3 sqrt(N))` largest weights; its shape
parameter k-hat measures the tail:

* k-hat < min(1 - 1/log10(N), 0.7): the (smoothed) estimates are reliable;
* k-hat >= 0.7: q misses mass of p; the importance-sampling estimates (and the
  variational fit) should not be trusted, whatever the ESS says.

The largest M weights are then replaced by the expected order statistics of the fitted
Pareto tail (capped at the largest raw weight), which lowers the variance of the
estimates. The fit is Zhang and Stephens' (2009) empirical-Bayes estimate with the
weakly informative prior of Vehtari et al. (shrinking k-hat towards 0.5 with the weight
of 10 observations), as in `loo` and ArviZ.

Numbers here are float64 NumPy: the diagnostic is computed once after fitting.
"""

import math
import typing

import numpy as np

__all__ = ["ImportanceResult", "importance_weights", "khat_threshold",
           "pareto_smooth", "weighted_expectation"]


class ImportanceResult(typing.NamedTuple):
  """What `importance_weights` returns.

  Attributes:
    log_weights: the Pareto-smoothed log weights, normalised to sum to 1 (`[N]`).
    khat: the estimated Pareto shape of the raw weights' right tail.
    khat_threshold: `min(1 - 1/log10(N), 0.7)`; `khat` above it: do not trust the
      estimates.
    log_normalizer: PSIS estimate of log Z, `log mean(smoothed w)`.
    ess: Kish's effective sample size of the smoothed weights.
    ess_fraction: `ess / N`.
    reliable: `khat < khat_threshold`.
  """
  log_weights: np.ndarray
  khat: float
  khat_threshold: float
  log_normalizer: float
  ess: float
  ess_fraction: float
  reliable: bool


def khat_threshold(num_samples):
  """`min(1 - 1 / log10(N), 0.7)`: the sample-size dependent k-hat threshold (PSIS 2024)."""
  return min(1.0 - 1.0 / math.log10(num_samples), 0.7)


def _gpd_fit(exceedances):
  """(k, sigma) of a generalized Pareto fitted to positive `exceedances` (sorted).

  Zhang and Stephens (2009): a posterior mean of the profile parameter
  `b = -k / sigma` over a grid of `30 + sqrt(n)` quantile-based values, weighted by
  their profile likelihoods; then Vehtari et al.'s prior `k <- (n k + 10 * 0.5)/(n + 10)`.
  """
  x = np.sort(exceedances)
  n = x.size
  prior_b, prior_k = 3.0, 10.0
  m = 30 + int(math.sqrt(n))
  b = 1.0 - np.sqrt(m / (np.arange(1, m + 1) - 0.5))
  b = b / (prior_b * x[int(n / 4 + 0.5) - 1]) + 1.0 / x[-1]
  # k(b) = mean log(1 - b x) (minus the usual k); profile log-likelihood of each b.
  k = np.mean(np.log1p(-b[:, None] * x), axis=1)
  log_likelihood = n * (np.log(-b / k) - k - 1.0)
  weights = 1.0 / np.sum(np.exp(log_likelihood[None, :] - log_likelihood[:, None]), axis=1)
  keep = weights >= 10 * np.finfo(float).eps
  weights, b = weights[keep], b[keep]
  b_post = np.sum(b * weights / np.sum(weights))
  k_post = np.mean(np.log1p(-b_post * x))
  sigma = -k_post / b_post
  k_post = (n * k_post + prior_k * 0.5) / (n + prior_k)
  return float(k_post), float(sigma)


def _gpd_quantile(p, k, sigma):
  if abs(k) < 1e-12:
    return -sigma * np.log1p(-p)
  return sigma * np.expm1(-k * np.log1p(-p)) / k


def pareto_smooth(log_weights):
  """(smoothed log weights, k-hat) of raw `log_weights` `[N]` (unnormalised).

  Raises:
    ValueError: for fewer than 10 weights or non-finite log weights other than -inf.
  """
  log_weights = np.asarray(log_weights, np.float64).reshape(-1)
  n = log_weights.size
  if n < 10:
    raise ValueError(f"PSIS needs at least 10 importance weights; got {n}.")
  if np.any(np.isnan(log_weights)) or np.any(log_weights == np.inf):
    raise ValueError("log_weights must be finite or -inf (zero weight); got NaN or +inf. "
                     "Check the target log-density at the flow's samples.")
  shifted = log_weights - np.max(log_weights)
  tail = int(math.ceil(min(0.2 * n, 3.0 * math.sqrt(n))))
  order = np.argsort(shifted)
  cutoff = shifted[order[-tail - 1]]
  tail_idx = order[-tail:]
  exceedances = np.exp(shifted[tail_idx]) - math.exp(cutoff)
  if cutoff == -np.inf or tail < 5 or np.all(exceedances <= 0):
    return shifted, np.inf if cutoff == -np.inf else 0.0
  k, sigma = _gpd_fit(exceedances)
  if not np.isfinite(k):
    return shifted, np.inf
  smoothed = shifted.copy()
  p = (np.arange(1, tail + 1) - 0.5) / tail
  # Expected order statistics of the fitted tail, in the order of the raw tail weights,
  # never above the largest raw weight (exp(0) after the shift).
  quantiles = np.log(_gpd_quantile(p, k, sigma) + math.exp(cutoff))
  smoothed[tail_idx] = np.minimum(quantiles, 0.0)
  return smoothed, k


def importance_weights(log_weights):
  """PSIS weights, k-hat, log Z and ESS from raw log weights `log p~(x_i) - log q(x_i)`.

  Args:
    log_weights: `[N]` array-like of raw log importance weights, `x_i ~ q`.

  Returns:
    An `ImportanceResult`.

  Raises:
    ValueError: for fewer than 10 weights (too few to fit the Pareto tail) or
      non-finite log weights other than -inf.
  """
  raw = np.asarray(log_weights, np.float64).reshape(-1)
  n = raw.size
  smoothed, khat = pareto_smooth(raw)
  # The smoothing worked on weights divided by the largest one; put the scale back.
  top = np.max(raw)
  log_sum = top + _logsumexp(smoothed)
  normalised = smoothed + top - log_sum
  ess = 1.0 / np.sum(np.exp(2.0 * normalised))
  threshold = khat_threshold(n)
  return ImportanceResult(
      log_weights=normalised, khat=float(khat), khat_threshold=threshold,
      log_normalizer=float(log_sum - math.log(n)), ess=float(ess),
      ess_fraction=float(ess / n), reliable=bool(khat < threshold))


def weighted_expectation(values, log_weights):
  """Self-normalised PSIS estimate of `E_p[f]` from `values = f(x_i)` `[N, ...]`.

  Returns `(estimate, result)` with `result` the `ImportanceResult` of the weights (check
  `result.reliable` / `result.khat` before trusting the estimate).
  """
  result = importance_weights(log_weights)
  values = np.asarray(values, np.float64)
  weights = np.exp(result.log_weights).reshape([-1] + [1] * (values.ndim - 1))
  return np.sum(weights * values, axis=0), result


def _logsumexp(x):
  top = np.max(x)
  if not np.isfinite(top):
    return top
  return float(top + math.log(np.sum(np.exp(x - top))))
