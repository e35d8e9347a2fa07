"""The log-det cache helpers under their former module name (see `_tfp_glue`).

Kept only for modules that still import this name (bijectors/coupling.py,
autoregressive.py, factor_out.py); new code imports `_tfp_glue`.
"""

from tfp_flows.bijectors._tfp_glue import remember_forward_log_det, remember_inverse_log_det

__all__ = ["remember_inverse_log_det", "remember_forward_log_det"]
