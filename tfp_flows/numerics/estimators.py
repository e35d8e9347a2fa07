"""Estimator specs: which trace or log-det estimator runs in training and in evaluation.

A flow layer estimates a Jacobian trace (continuous flows) or log|det(I + J)| (residual
flows) on every call. Training wants a cheap unbiased estimate with fresh randomness
per step; evaluation (`log_prob`, export) wants a deterministic number, the same for a
point alone or in any batch. A spec object says both, and `choose` is the one place
that applies the rule:

```none
training                 the `training` method; stochastic ones draw a fresh seed per
                         step (the caller's SeedGenerator), probes indexed by row
evaluation, D <= M       "exact" (deterministic), D the event size, M = exact_max_dims
evaluation, D > M        the stochastic method with one Rademacher probe per point,
                         keyed by the point's values (`probes.content_keyed_probes`)
                         and the fixed `evaluation_seed`: deterministic and
                         batch-independent, unbiased (up to a truncation bias for the
                         log-det series), a one-probe estimate per point
```

`choose` returns an `Estimator`, the fully resolved choice that the bijectors
(`tfp_flows.bijectors.ContinuousFlow`, `ResidualBlock`) take as `trace=` / `log_det=`
(as `tfb.FFJORD` takes a `trace_augmentation_fn`). Pure Python and TensorFlow: no
Keras, no bijectors.
"""

import collections

from tfp_flows.numerics import aliases
from tfp_flows.numerics import checks
from tfp_flows.numerics import log_det_series
from tfp_flows.numerics import trace

__all__ = ["Estimator", "LogDetEstimator", "TraceEstimator", "as_estimator",
           "probe_distribution"]

Estimator = collections.namedtuple(
    "Estimator", ["method", "probe", "keyed_probes", "seed", "num_terms"])
Estimator.__doc__ = """One resolved estimator, as a bijector runs it.

Fields:
  method: "exact" or "hutchinson" (traces); "exact", "series" or "russian_roulette"
    (log-dets).
  probe: probe distribution of the stochastic methods, "rademacher" or "normal".
  keyed_probes: probes keyed by each row's values (`probes.content_keyed_probes`)
    rather than its batch index.
  seed: a fixed stateless seed (a pair of ints), or None: the caller supplies one
    (a fresh one per training step).
  num_terms: terms of the "series" log-det (else unused).
"""

# "gaussian" is the former spelling of the normal probes (`noise="gaussian"`).
_PROBE_SPELLINGS = {"rademacher": "rademacher", "normal": "normal", "gaussian": "normal"}


def probe_distribution(noise):
  """The probe distribution named by `noise`: "rademacher", or "normal" (alias "gaussian")."""
  checks.one_of("noise", noise, tuple(_PROBE_SPELLINGS))
  return _PROBE_SPELLINGS[noise]


def as_estimator(method, methods, noise="rademacher", keyed_probes=False, num_terms=None,
                 name="method"):
  """`method` as an `Estimator`: an `Estimator` as it is, a method name with the options.

  Raises:
    ValueError: an unknown method or probe, or keyed probes that are not Rademacher.
  """
  if isinstance(method, Estimator):
    estimator = method
  else:
    estimator = Estimator(checks.one_of(name, method, methods), probe_distribution(noise),
                          bool(keyed_probes), None, num_terms)
  checks.one_of(name, estimator.method, methods)
  if estimator.keyed_probes and estimator.probe != "rademacher":
    raise ValueError("content-keyed probes are Rademacher probes; got probe "
                     f"{estimator.probe!r}. Use noise='rademacher'.")
  return estimator


class _TrainingEvaluationRule:
  """The training/evaluation rule shared by the two specs (see the module docstring)."""

  _METHODS = ()
  _STOCHASTIC_EVALUATION = ""

  def __init__(self, training, evaluation, exact_max_dims, evaluation_seed, name):
    self.training = checks.one_of(name, training, self._METHODS)
    self.evaluation = checks.one_of(
        "evaluation", evaluation, ("exact", self._STOCHASTIC_EVALUATION))
    if not checks.is_int_at_least(exact_max_dims, 0):
      raise ValueError("exact_max_dims must be a non-negative int (0: never exact); got "
                       f"{exact_max_dims!r}.")
    self.exact_max_dims = int(exact_max_dims)
    seed = tuple(evaluation_seed)
    if len(seed) != 2 or not all(checks.is_int_at_least(s, 0) for s in seed):
      raise ValueError("evaluation_seed must be a pair of non-negative ints; got "
                       f"{evaluation_seed!r}.")
    self.evaluation_seed = seed

  def choose(self, training, event_size, **kwargs):
    """The `Estimator` for a training or evaluation call on events of `event_size` entries.

    The one place where the training/evaluation rule is applied.

    Args:
      training: whether the call trains.
      event_size: D, the number of entries of one event.
      **kwargs: what the evaluation estimator needs (`LogDetEstimator`: `lipschitz`).
    """
    if training:
      return self._training_estimator()
    if self.evaluation == "exact" and event_size <= self.exact_max_dims:
      return Estimator("exact", "rademacher", False, None, None)
    return Estimator(self._STOCHASTIC_EVALUATION, "rademacher", True, self.evaluation_seed,
                     self._evaluation_terms(event_size, **kwargs))

  def describe(self, training, event_size, **kwargs):
    """A short name of the estimator `choose` picks, for logs and docs."""
    estimator = self.choose(training, event_size, **kwargs)
    if estimator.method == "series":
      return f"series ({estimator.num_terms} terms)"
    return estimator.method + (" (keyed probe)" if estimator.keyed_probes else "")

  def _training_estimator(self):
    raise NotImplementedError

  def _evaluation_terms(self, event_size, **kwargs):
    """Terms of the evaluation estimator (None: not a series)."""
    del event_size, kwargs

  @classmethod
  def from_spec(cls, spec):
    """`spec` itself, or a spec of this class from its `get_config()` dict."""
    if isinstance(spec, cls):
      return spec
    if isinstance(spec, dict):
      return cls(**spec)
    raise ValueError(f"Expected a {cls.__name__} or its config dict; got {spec!r}.")


class TraceEstimator(_TrainingEvaluationRule):
  """Trace estimator spec of continuous flows: tr(df/dz) in training and in evaluation.

  Args:
    training: "hutchinson" (one probe per row, fixed along the trajectory) or "exact".
    evaluation: "exact" (exact up to `exact_max_dims` entries, keyed Hutchinson above)
      or "hutchinson" (always keyed Hutchinson).
    probe: training probes, "rademacher" (the lower variance) or "normal" ("gaussian"
      is accepted as well).
    exact_max_dims: largest event size evaluated with the exact trace.
    evaluation_seed: the fixed seed of the evaluation probes.
  """

  _METHODS = trace.TRACE_METHODS
  _STOCHASTIC_EVALUATION = "hutchinson"

  def __init__(self, training="hutchinson", evaluation="exact", probe="rademacher",
               exact_max_dims=32, evaluation_seed=(20181003, 0)):
    super().__init__(training, evaluation, exact_max_dims, evaluation_seed, name="trace")
    self.probe = probe_distribution(probe)

  def _training_estimator(self):
    return Estimator(self.training, self.probe, False, None, None)

  def get_config(self):
    """The constructor arguments (JSON-serialisable): `TraceEstimator(**config)`."""
    return {"training": self.training, "evaluation": self.evaluation, "probe": self.probe,
            "exact_max_dims": self.exact_max_dims,
            "evaluation_seed": list(self.evaluation_seed)}


class LogDetEstimator(_TrainingEvaluationRule):
  """log|det(I + J_g)| estimator spec of residual blocks, in training and in evaluation.

  Evaluation above `exact_max_dims` runs the power series with the fewest terms n whose
  truncation bias `D L^(n+1) / ((n+1)(1 - L))` is below `evaluation_bias` nats, for the
  block's Lipschitz bound L (`choose(..., lipschitz=L)`).

  Args:
    training: "russian_roulette" (unbiased), "series" (`num_exact_terms` terms) or
      "exact".
    evaluation: "exact" (exact up to `exact_max_dims` entries, the series above) or
      "series" (always the keyed series).
    gradient: "neumann" (memory flat in the terms) or "backprop".
    num_exact_terms: terms the roulette always computes, or all terms of "series"
      (default 2).
    distribution: the roulette's count distribution, "geometric" or "poisson".
    exact_max_dims: largest event size evaluated with the exact log-det.
    evaluation_bias: largest truncation bias (nats) of the evaluation series.
    evaluation_seed: the fixed seed of the evaluation probes.
    n_exact_terms: older alias of `num_exact_terms` (pass one of the two); configs
      written with it still load.

  Raises:
    ValueError: for an argument outside its range, or `num_exact_terms` passed in both
      spellings.
  """

  _METHODS = log_det_series.LOG_DET_METHODS
  _STOCHASTIC_EVALUATION = "series"

  def __init__(self, training="russian_roulette", evaluation="exact", gradient="neumann",
               num_exact_terms=None, distribution="geometric", exact_max_dims=256,
               evaluation_bias=1e-3, evaluation_seed=(20191104, 0), *,
               n_exact_terms=None):
    super().__init__(training, evaluation, exact_max_dims, evaluation_seed, name="log_det")
    self.gradient = checks.one_of("gradient", gradient, log_det_series.GRADIENTS)
    spelled = aliases.spelling("num_exact_terms", "n_exact_terms", n_exact_terms)
    num_exact_terms = aliases.resolve("num_exact_terms", num_exact_terms, "n_exact_terms",
                                      n_exact_terms, 2)
    minimum = 1 if training == "series" else 0
    if not checks.is_int_at_least(num_exact_terms, minimum):
      raise ValueError(f"{spelled} must be an int >= {minimum} with "
                       f"log_det={training!r}; got {num_exact_terms!r}.")
    self.num_exact_terms = int(num_exact_terms)
    self.distribution = checks.one_of("distribution", distribution,
                                      log_det_series.COUNT_DISTRIBUTIONS)
    self.evaluation_bias = checks.positive_float("evaluation_bias", evaluation_bias)

  @property
  def n_exact_terms(self):
    """Older alias of `num_exact_terms`."""
    return self.num_exact_terms

  def _training_estimator(self):
    return Estimator(self.training, "rademacher", False, None, self.num_exact_terms)

  def get_config(self):
    """The constructor arguments (JSON-serialisable): `LogDetEstimator(**config)`."""
    return {"training": self.training, "evaluation": self.evaluation,
            "gradient": self.gradient, "num_exact_terms": self.num_exact_terms,
            "distribution": self.distribution, "exact_max_dims": self.exact_max_dims,
            "evaluation_bias": self.evaluation_bias,
            "evaluation_seed": list(self.evaluation_seed)}

  def _evaluation_terms(self, event_size, lipschitz=None):
    """Smallest n with truncation bias D L^(n+1) / ((n+1)(1 - L)) below the target."""
    if lipschitz is None or not 0.0 < lipschitz < 1.0:
      raise ValueError("The evaluation series needs the block's Lipschitz bound L in "
                       f"(0, 1) to size its truncation; got lipschitz={lipschitz!r}.")
    n = 1
    while event_size * lipschitz ** (n + 1) / ((n + 1) * (1 - lipschitz)) >= (
        self.evaluation_bias):
      n += 1
    return n
