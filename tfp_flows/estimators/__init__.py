"""The public face of the stochastic estimators (implemented in `tfp_flows.numerics`).

Specs that bijectors and layers take, with the training/evaluation rule:
`TraceEstimator` (continuous flows), `LogDetEstimator` (residual flows), and the
resolved `Estimator` their `choose` returns. Pure functions with an explicit stateless
seed: probes (`hutchinson_probes`, `content_keyed_probes`), exact and Hutchinson traces
and the dense-Jacobian log-determinant, and log|det(I + J_g)| of residual flows by
truncated, Russian-roulette and Neumann-gradient power series.
"""

from tfp_flows.numerics.estimators import Estimator, LogDetEstimator, TraceEstimator
from tfp_flows.numerics.log_det_series import (estimate_log_det, neumann_log_det,
                                               power_series_log_det,
                                               russian_roulette_log_det)
from tfp_flows.numerics.probes import content_keyed_probes, hutchinson_probes
from tfp_flows.numerics.trace import exact_jacobian_log_det, exact_trace, hutchinson_trace

__all__ = [
    "Estimator", "LogDetEstimator", "TraceEstimator", "content_keyed_probes",
    "estimate_log_det", "exact_jacobian_log_det", "exact_trace", "hutchinson_probes",
    "hutchinson_trace", "neumann_log_det", "power_series_log_det",
    "russian_roulette_log_det",
]
