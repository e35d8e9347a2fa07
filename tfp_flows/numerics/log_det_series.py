"""Power-series estimators of log|det(I + J_g(x))| for residual flows y = x + g(x).

For Lip(g) < 1 every eigenvalue of J = J_g(x) lies in the open unit disc, and
(Behrmann et al., Sec. 3):

```none
log|det(I + J)| = tr log(I + J) = sum_{k>=1} (-1)^(k+1) / k * tr(J^k)
tr(J^k) ~ v^T J^k v,    E[v v^T] = I                     (Hutchinson)
v^T J^k = (v^T J^(k-1)) J                               (one vjp per power)
```

All estimators run g forward once, under a persistent `tf.GradientTape`, and build the
powers v^T J^k by repeated vector-Jacobian products (vjps) through that one recorded pass.
Reverse mode is the efficient choice here: each vjp reuses the stored forward pass of g,
whereas forward mode (`tf.autodiff.ForwardAccumulator`) computes J u alongside g itself and
would re-run g for every power; and the Neumann gradient below needs a row vector times J,
which is a vjp anyway. Both give the same traces, since v^T J^k v = v^T (J^k v).

The estimators, their cost in vjps and their gradients:

```none
power_series_log_det       sum_{k=1}^{n} (-1)^(k+1)/k v^T J^k v      n vjps; biased:
                           |E[est] - log det| <= D L^(n+1) / ((n+1)(1-L)), L = Lip(g)
russian_roulette_log_det   n = num_exact_terms + N random terms, term k reweighted by
                           1 / P(N >= k - num_exact_terms)  (Chen et al., eq. 6)
                           unbiased; num_exact_terms + E[N] vjps on average
neumann_log_det            the roulette value, with the gradient of Chen et al. eq. 8
                           one vjp more; gradient memory independent of n
```

Gradients ("gradient=" argument): "backprop" differentiates through all n vjps (a
second-order pass through each of them; memory grows linearly in n, and under XLA the
while loop of random terms sizes its gradient accumulators by its iteration cap).
"neumann" never differentiates the series: since d log det(I + J) = tr((I + J)^-1 dJ) and
(I + J)^-1 = sum_{k>=0} (-J)^k,

```none
d/dtheta log det(I + J) = E[ w^T (dJ/dtheta) v ],
w^T = sum_{k=0}^{n-1} (-1)^k / P(N >= k + 1 - num_exact_terms) v^T J^k      (eq. 8)
```

(the probability is 1 where its argument is <= 0). w is a by-product of the value's vjps;
the estimator returns `value + (s - stop_gradient(s))` with `value` and `w` behind
`stop_gradient` and s = <vjp(w), v> = w^T J v: the number is the roulette estimate and
its gradient, with respect to x and every variable g reads, is w^T (dJ/dtheta) v. Only
the one vjp inside s is differentiated (a second-order pass through one vjp), so the
memory does not grow with the number of terms. The saving is in the gradient graph, which
is what `tf.function`/XLA training (Keras `fit`) runs; an eager-mode `GradientTape` keeps
the tensors of every op it recorded alive until it is released, wanted or not.

Both gradients are unbiased for the gradient of E[value] (the probe and the count do not
depend on theta); w matches the value term by term, so the Neumann gradient equals the
exact gradient of the series when probes run over a basis (the tests check this).

`num_exact_terms` is the library's spelling of the number of terms always computed (that
of `tfp_flows.layers.ResidualBlock`, `LogDetEstimator` and `ResidualFlow`); the functions
here also take the older `n_exact_terms=` (one of the two).

References:
  Behrmann et al., Invertible Residual Networks, https://arxiv.org/abs/1811.00995.
  Chen et al., Residual Flows for Invertible Generative Modeling,
  https://arxiv.org/abs/1906.02735 (Sec. 3.1-3.2, eqs. 6-8).
"""

import math

import tensorflow as tf

from tfp_flows.numerics import aliases
from tfp_flows.numerics import checks
from tfp_flows.numerics import probes
from tfp_flows.numerics import trace

__all__ = ["COUNT_DISTRIBUTIONS", "GRADIENTS", "LOG_DET_METHODS", "estimate_log_det",
           "neumann_log_det", "power_series_log_det", "russian_roulette_log_det"]

LOG_DET_METHODS = ("exact", "series", "russian_roulette")
GRADIENTS = ("neumann", "backprop")
COUNT_DISTRIBUTIONS = ("geometric", "poisson")


def power_series_log_det(g, x, probe, num_terms, gradient="backprop", return_output=False):
  """Truncated power series sum_{k=1}^{n} (-1)^(k+1)/k v^T J^k v, per row.

  Deterministic given the probe; biased by the series remainder, at most
  E||v||^2 L^(n+1) / ((n+1)(1-L)) = D L^(n+1) / ((n+1)(1-L)) for L = Lip(g) < 1
  (the i-ResNet estimator). Cost: one forward pass of g and n vjps, unrolled (n is
  static, so the graph grows with n; a few to a few tens of terms is the intended use).

  Args:
    g: callable mapping `[N, *event]` to `[N, *event]` row by row, with Lip(g) < 1.
    x: tensor `[N, *event]` with static rank.
    probe: tensor shaped like `x` (see `probes.hutchinson_probes`).
    num_terms: static int n >= 1.
    gradient: "backprop" or "neumann" (see the module docstring); the value is the same.
    return_output: also return g(x), from the same forward pass.

  Returns:
    `[N]` estimates, or `(g(x), log_det)` if `return_output`.
  """
  num_terms = checks.int_at_least("num_terms", num_terms, 1)
  return _series_log_det(g, x, probe, num_terms, None, gradient, return_output)


def russian_roulette_log_det(g, x, probe, seed, num_exact_terms=None,
                             distribution="geometric", geometric_p=0.5, poisson_rate=2.0,
                             max_num_terms=64, gradient="backprop", return_output=False, *,
                             n_exact_terms=None):
  """Unbiased Russian-roulette estimate of log|det(I + J_g(x))| (Chen et al., eq. 6).

  ```none
  n = num_exact_terms + N,   N ~ geometric(p) on {0, 1, ...} or Poisson(rate)
  estimate = sum_{k=1}^{n} (-1)^(k+1)/k * v^T J^k v / P(N >= k - num_exact_terms)
  P(N >= m) = (1 - p)^m (geometric),  igamma(m, rate) (Poisson),  1 for m <= 0
  ```

  Term k appears exactly when N >= k - num_exact_terms, so dividing by that probability
  makes every term's expectation the series term: E[estimate] = log|det(I + J)|.
  (The geometric N counts from 0, so the reference code's geometric on {1, 2, ...} with
  num_exact_terms = t matches t + 1 here.)

  One N is drawn per call, shared by every row, as in the reference implementation: the
  batch then runs exactly n vjps, whereas a count per row would cost the batch's largest
  count. Rows stay unbiased individually; only their errors are correlated. A row's value
  depends on the seed and its own inputs only.

  N comes from a float64 uniform u by inverse CDF (XLA has no Poisson sampler):
  geometric N = floor(log(1 - u) / log(1 - p)); Poisson N = #{m < M : CDF(m) <= u}, over
  the capped support M = max_num_terms - num_exact_terms, with CDF(m) =
  igammac(m + 1, rate).
  The random terms run in a `tf.while_loop` with `maximum_iterations` M, so N is capped at
  M. The estimator differs from the uncapped one only when N > M, with probability
  (1 - p)^(M + 1) (geometric; 2^-63 ~ 1e-19 for the defaults) or P(Poisson(rate) > M)
  (~7e-70 for the defaults); the bias this leaves is the series remainder after
  max_num_terms terms, at most D L^K / (K (1 - L)) for K = max_num_terms + 1. (A float64
  u, a multiple of 2^-53, also keeps N below the m where P(N > m) < 2^-53: about 53 for
  p = 0.5, 22 for rate = 2.)

  Cost and variance: num_exact_terms + E[N] vjps on average (E[N] = (1 - p)/p or rate).
  The variance is a sum of t_m^2 / P(N >= m) over the reweighted terms t_m ~ L^m: finite
  for the geometric count when L^2 < 1 - p (L < 0.71 for p = 0.5); the Poisson weights
  grow like m! / rate^m, so only the cap (and the float64 u) bounds its far tail, though
  terms that far out are practically never drawn. More exact terms cut the variance at a
  fixed cost each.

  Args:
    g: callable mapping `[N, *event]` to `[N, *event]` row by row, with Lip(g) < 1.
    x: tensor `[N, *event]` with static rank.
    probe: tensor shaped like `x` (see `probes.hutchinson_probes`).
    seed: stateless seed (int32/int64, shape [2]) for the count N only.
    num_exact_terms: static int >= 0, terms always computed (default 2).
    distribution: "geometric" or "poisson", the law of N.
    geometric_p: success probability p in (0, 1) of the geometric count.
    poisson_rate: rate > 0 of the Poisson count.
    max_num_terms: static int >= num_exact_terms, the cap on n.
    gradient: "backprop" or "neumann" (see the module docstring); the value is the same.
    return_output: also return g(x), from the same forward pass.
    n_exact_terms: older alias of `num_exact_terms`.

  Returns:
    `[N]` estimates, or `(g(x), log_det)` if `return_output`.

  Raises:
    ValueError: an argument outside its range, an unknown `distribution`/`gradient`, or
      `num_exact_terms` passed in both spellings.
  """
  num_exact_terms = checks.int_at_least(
      aliases.spelling("num_exact_terms", "n_exact_terms", n_exact_terms),
      aliases.resolve("num_exact_terms", num_exact_terms, "n_exact_terms", n_exact_terms, 2),
      0)
  max_num_terms = checks.int_at_least("max_num_terms", max_num_terms,
                                      max(num_exact_terms, 1))
  max_random_terms = max_num_terms - num_exact_terms
  tail_probability = _count_tail(distribution, geometric_p, poisson_rate)
  count = _sample_count(seed, distribution, geometric_p, poisson_rate, max_random_terms)
  return _series_log_det(g, x, probe, num_exact_terms,
                         (count, tail_probability, max_random_terms), gradient,
                         return_output)


def neumann_log_det(g, x, probe, seed, num_exact_terms=None, distribution="geometric",
                    geometric_p=0.5, poisson_rate=2.0, max_num_terms=64,
                    return_output=False, *, n_exact_terms=None):
  """The Russian-roulette estimate, differentiated by the Neumann series (Chen et al., eq. 8).

  The value equals `russian_roulette_log_det` with the same arguments. The gradient with
  respect to x and to every variable g reads is w^T (dJ/dtheta) v with
  w^T = sum_{k=0}^{n-1} (-1)^k / P(N >= k + 1 - num_exact_terms) v^T J^k, an unbiased
  estimate of d log det(I + J) / dtheta = tr((I + J)^-1 dJ/dtheta). Cost: the value's n
  vjps plus one; the backward pass differentiates only that last vjp, so its memory does
  not grow with n (in graph mode; see the module docstring).

  Args:
    g: callable mapping `[N, *event]` to `[N, *event]` row by row, with Lip(g) < 1; it may
      read `tf.Variable`s or Keras weights, which receive the Neumann gradient.
    x: tensor `[N, *event]` with static rank.
    probe: tensor shaped like `x` (see `probes.hutchinson_probes`).
    seed: stateless seed (int32/int64, shape [2]) for the count N only.
    num_exact_terms, distribution, geometric_p, poisson_rate, max_num_terms: as in
      `russian_roulette_log_det`.
    return_output: also return g(x), from the same forward pass.
    n_exact_terms: older alias of `num_exact_terms`.

  Returns:
    `[N]` estimates, or `(g(x), log_det)` if `return_output`.

  Raises:
    ValueError: an argument outside its range, an unknown `distribution`, or
      `num_exact_terms` passed in both spellings.
  """
  return russian_roulette_log_det(
      g, x, probe, seed, num_exact_terms=num_exact_terms, distribution=distribution,
      geometric_p=geometric_p, poisson_rate=poisson_rate, max_num_terms=max_num_terms,
      gradient="neumann", return_output=return_output, n_exact_terms=n_exact_terms)


def estimate_log_det(g, x, method="russian_roulette", gradient="neumann", seed=None, *,
                     num_terms=10, num_exact_terms=None, distribution="geometric",
                     geometric_p=0.5, poisson_rate=2.0, max_num_terms=64,
                     probe_distribution="rademacher", content_keyed_probes=False,
                     return_output=False, n_exact_terms=None):
  """log|det(I + J_g(x))| per row by the named method: the entry point for bijectors.

  ```none
  "exact"             trace.exact_jacobian_log_det; D vjps, O(N D^2) memory; exact,
                      differentiated by autodiff (`gradient` and `seed` are unused)
  "series"            power_series_log_det with num_terms terms; biased
  "russian_roulette"  russian_roulette_log_det; unbiased (the residual-flow default)
  ```

  For the stochastic methods `seed` is split in two: one half draws one probe per row
  (`probes.hutchinson_probes`, `probe_distribution`), the other the roulette count.

  Args:
    g: callable mapping `[N, *event]` to `[N, *event]` row by row, with Lip(g) < 1.
    x: tensor `[N, *event]` with static rank (and static event dimensions for "exact").
    method: "exact", "series" or "russian_roulette".
    gradient: "neumann" or "backprop", for "series" and "russian_roulette".
    seed: stateless seed (int32/int64, shape [2]); required unless method is "exact".
    num_terms: terms of the "series" method.
    num_exact_terms, distribution, geometric_p, poisson_rate, max_num_terms: the
      roulette's arguments (see `russian_roulette_log_det`).
    probe_distribution: "rademacher" or "normal".
    content_keyed_probes: draw each row's (Rademacher) probe from its values
      (`probes.content_keyed_probes`) rather than its index, so a point's estimate does
      not depend on its batch; for deterministic evaluation.
    return_output: also return g(x), from the same forward pass.
    n_exact_terms: older alias of `num_exact_terms`.

  Returns:
    `[N]` log-determinant estimates, or `(g(x), log_det)` if `return_output`.

  Raises:
    ValueError: unknown `method` or `gradient`, no `seed` for a stochastic method, or
      `num_exact_terms` passed in both spellings.
  """
  checks.one_of("method", method, LOG_DET_METHODS)
  checks.one_of("gradient", gradient, GRADIENTS)
  if method == "exact":
    return trace.exact_jacobian_log_det(g, x, return_output=return_output)
  if seed is None:
    raise ValueError(f"method={method!r} is stochastic and needs a seed (a stateless "
                     "seed of shape [2]); got seed=None.")
  x = tf.convert_to_tensor(x)
  probe_seed, count_seed = tf.unstack(probes.split_seed(seed))
  if content_keyed_probes:
    if probe_distribution != "rademacher":
      raise ValueError("content_keyed_probes draws Rademacher probes; got "
                       f"probe_distribution={probe_distribution!r}.")
    probe = probes.content_keyed_probes(x, probe_seed)
  else:
    probe = probes.hutchinson_probes(tf.shape(x), probe_seed, x.dtype, probe_distribution)
  if method == "series":
    return power_series_log_det(g, x, probe, num_terms, gradient=gradient,
                                return_output=return_output)
  return russian_roulette_log_det(
      g, x, probe, count_seed, num_exact_terms=num_exact_terms, distribution=distribution,
      geometric_p=geometric_p, poisson_rate=poisson_rate, max_num_terms=max_num_terms,
      gradient=gradient, return_output=return_output, n_exact_terms=n_exact_terms)


def _series_log_det(g, x, probe, num_exact_terms, roulette, gradient, return_output):
  """The shared kernel: num_exact_terms unrolled terms, then the roulette's random terms.

  `roulette` is None or (count N, m -> P(N >= m) in float64, static cap on N). Term
  k = num_exact_terms + m carries coefficient (-1)^(k+1) / P(N >= m); w collects
  coefficient * v^T J^(k-1) for the Neumann gradient.
  """
  neumann = checks.one_of("gradient", gradient, GRADIENTS) == "neumann"
  x = tf.convert_to_tensor(x)
  probe = tf.convert_to_tensor(probe, dtype=x.dtype)
  probes.check_batched(x)
  # One forward pass of g; every power below is a vjp through this recording.
  with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
    tape.watch(x)
    gx = g(x)

  def vjp(u):
    return tape.gradient(gx, x, output_gradients=u,
                         unconnected_gradients=tf.UnconnectedGradients.ZERO)

  u = probe  # v^T J^(k-1) at the start of term k
  value = tf.zeros(tf.shape(x)[:1], x.dtype)
  w = tf.zeros_like(x) if neumann else None
  for k in range(1, num_exact_terms + 1):
    sign = 1.0 if k % 2 else -1.0
    if neumann:
      w += sign * u
    u = vjp(u)
    value += (sign / k) * trace.row_dot(u, probe)

  if roulette is not None and roulette[2] > 0:
    count, tail_probability, max_random_terms = roulette

    def body(m, u, value, *w):
      k = tf.cast(num_exact_terms + m, tf.float64)
      sign = 1.0 - 2.0 * tf.math.floormod(k + 1.0, 2.0)
      coefficient = tf.cast(sign / tail_probability(m), x.dtype)
      if neumann:
        w = (w[0] + coefficient * u,)
      u = vjp(u)
      value += coefficient / tf.cast(k, x.dtype) * trace.row_dot(u, probe)
      return (m + 1, u, value) + w

    _, u, value, *w = tf.while_loop(
        lambda m, *_: m <= count, body,
        (tf.constant(1, tf.int32), u, value) + ((w,) if neumann else ()),
        maximum_iterations=max_random_terms)
    w = w[0] if neumann else None

  if neumann:
    # d/dtheta <vjp(w), v> = w^T (dJ/dtheta) v with w fixed: Chen et al. eq. 8.
    surrogate = trace.row_dot(vjp(tf.stop_gradient(w)), probe)
    log_det = tf.stop_gradient(value) + (surrogate - tf.stop_gradient(surrogate))
  else:
    log_det = value
  return (gx, log_det) if return_output else log_det


def _sample_count(seed, distribution, geometric_p, poisson_rate, max_count):
  """The roulette count N <= max_count, by inverse CDF from one float64 uniform."""
  u = probes.uniform_float64([], seed)
  if distribution == "geometric":
    # P(N >= m) = P(1 - u <= (1 - p)^m) = (1 - p)^m.
    count = tf.floor(tf.math.log1p(-u) / math.log1p(-geometric_p))
    count = tf.minimum(count, float(max_count))
  else:
    # N = min{m : CDF(m) > u} = #{m : CDF(m) <= u}, counted over the capped support.
    support = tf.range(max_count, dtype=tf.float64)
    cdf = tf.math.igammac(support + 1.0, tf.constant(poisson_rate, tf.float64))
    count = tf.reduce_sum(tf.cast(cdf <= u, tf.float64))
  return tf.cast(count, tf.int32)


def _count_tail(distribution, geometric_p, poisson_rate):
  """m -> P(N >= m) for int m >= 1, in float64, after checking the parameters."""
  if checks.one_of("distribution", distribution, COUNT_DISTRIBUTIONS) == "geometric":
    if not 0.0 < geometric_p < 1.0:
      raise ValueError(f"geometric_p must be in (0, 1); got {geometric_p!r}.")
    log_q = math.log1p(-geometric_p)
    return lambda m: tf.exp(tf.cast(m, tf.float64) * log_q)
  rate = checks.positive_float("poisson_rate", poisson_rate)
  # P(Poisson(rate) >= m) = P(Gamma(m, 1) <= rate), the regularised lower gamma.
  return lambda m: tf.math.igamma(tf.cast(m, tf.float64), tf.constant(rate, tf.float64))
