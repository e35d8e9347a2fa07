"""Stochastic estimators as pure functions with an explicit stateless seed.

`trace`: exact and Hutchinson traces and the dense-Jacobian log-determinant;
`log_det_series`: log|det(I + J_g)| of residual flows by truncated, Russian-roulette and
Neumann-gradient power series.
"""

from tfp_flows.estimators.log_det_series import (estimate_log_det, neumann_log_det,
                                                 power_series_log_det,
                                                 russian_roulette_log_det)
from tfp_flows.estimators.trace import (content_keyed_probes, exact_jacobian_log_det,
                                        exact_trace, hutchinson_probes, hutchinson_trace)

__all__ = [
    "content_keyed_probes", "estimate_log_det", "exact_jacobian_log_det", "exact_trace",
    "hutchinson_probes", "hutchinson_trace", "neumann_log_det", "power_series_log_det",
    "russian_roulette_log_det",
]
