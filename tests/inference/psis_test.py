"""PSIS: k-hat, log Z and ESS against closed forms on Gaussian-to-Gaussian weights.

Draws x ~ q = N(0, 1) and weights w = Z N(x; mu, s^2) / q(x): in closed form

```none
Z                = E_q[w]
ESS / N         -> Z^2 / E_q[w^2] = sqrt(s^2 (2 - s^2)) exp(-mu^2 / (2 - s^2))   (s^2 < 2)
tail shape  k    = 1 - 1 / s^2        (P(w > t) ~ t^(-1/k) for s^2 > 1)
```
"""

import math

import numpy as np
import pytest

from tfp_flows.inference import psis

N = 20000


def _log_weights(mu, s2, log_z, seed=0, n=N, dims=1):
  x = np.random.default_rng(seed).normal(size=[n, dims])
  log_p = np.sum(-0.5 * (x - mu)**2 / s2 - 0.5 * np.log(2 * np.pi * s2), axis=1)
  log_q = np.sum(-0.5 * x**2 - 0.5 * np.log(2 * np.pi), axis=1)
  return x, log_z + log_p - log_q


@pytest.mark.parametrize("mu,s2", [(0.0, 0.5), (0.5, 0.8), (0.3, 1.2)])
def test_log_normalizer_and_ess_match_closed_forms(mu, s2):
  # s^2 < 4/3: E_q[w^4] is finite, so the sample ESS itself has a finite variance.
  dims = 2
  _, log_weights = _log_weights(mu, s2, log_z=2.5, dims=dims)
  result = psis.importance_weights(log_weights)
  ess_fraction = (math.sqrt(s2 * (2 - s2)) * math.exp(-mu**2 / (2 - s2)))**dims
  # Standard errors: log Z ~ sqrt(1/ESS - 1/N)-ish, ESS fraction a few percent.
  assert abs(result.log_normalizer - 2.5) < 4 * math.sqrt(1 / result.ess)
  np.testing.assert_allclose(result.ess_fraction, ess_fraction, rtol=0.05)
  assert result.khat < 0.5 and result.reliable
  np.testing.assert_allclose(np.sum(np.exp(result.log_weights)), 1.0, rtol=1e-12)


@pytest.mark.parametrize("s2", [2.0, 4.0, 10.0])
def test_khat_estimates_the_tail_shape(s2):
  _, log_weights = _log_weights(0.0, s2, log_z=0.0, n=100000)
  result = psis.importance_weights(log_weights)
  # k-hat is biased low at finite N for the Gaussian's slowly converging tail (the
  # Pareto limit is approached logarithmically); PSIS's own studies show the same.
  assert 1 - 1 / s2 - 0.12 < result.khat < 1 - 1 / s2 + 0.05
  assert result.reliable == (result.khat < 0.7)
  assert not psis.importance_weights(_log_weights(0.0, 10.0, 0.0, n=100000)[1]).reliable


def test_khat_on_exact_pareto_draws():
  # One fit uses the 424 largest of 20000 draws: a standard error near 0.07, so the
  # mean over 5 independent sets (standard error ~0.03) is checked.
  for k in (0.2, 0.5, 0.9):
    estimates = []
    for seed in range(5):
      u = np.random.default_rng(seed).uniform(size=20000)
      draws = np.expm1(-k * np.log(u)) / k  # generalized Pareto, shape k, scale 1
      estimates.append(psis.pareto_smooth(np.log(draws))[1])
    np.testing.assert_allclose(np.mean(estimates), k, atol=0.06)


def test_weighted_expectation_recovers_target_moments():
  x, log_weights = _log_weights(0.5, 0.8, log_z=-1.0)
  mean, result = psis.weighted_expectation(x[:, 0], log_weights)
  second, _ = psis.weighted_expectation(x[:, 0]**2, log_weights)
  assert abs(mean - 0.5) < 4 * math.sqrt(0.8 / result.ess)
  np.testing.assert_allclose(second - mean**2, 0.8, rtol=0.05)


def test_smoothing_caps_the_tail_and_keeps_the_rest():
  _, log_weights = _log_weights(0.0, 4.0, log_z=0.0)
  smoothed, khat = psis.pareto_smooth(log_weights)
  shifted = log_weights - log_weights.max()
  tail = int(math.ceil(min(0.2 * N, 3 * math.sqrt(N))))
  order = np.argsort(shifted)
  np.testing.assert_array_equal(smoothed[order[:-tail]], shifted[order[:-tail]])
  assert np.all(smoothed <= 0.0) and khat > 0.5
  # The smoothed weights have lower variance than the raw ones.
  assert np.var(np.exp(smoothed)) < np.var(np.exp(shifted))


def test_bad_weights_are_clear_errors():
  with pytest.raises(ValueError, match="at least 10"):
    psis.importance_weights(np.zeros(5))
  with pytest.raises(ValueError, match="NaN"):
    psis.importance_weights(np.r_[np.zeros(20), np.nan])
