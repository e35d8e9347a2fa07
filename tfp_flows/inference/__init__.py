"""Bayesian inference with flows: importance diagnostics (PSIS) and NeuTra MCMC."""

from tfp_flows.inference.neutra import NeuTraResult, neutra_sample
from tfp_flows.inference.psis import (ImportanceResult, importance_weights, khat_threshold,
                                      pareto_smooth, weighted_expectation)

__all__ = ["ImportanceResult", "NeuTraResult", "importance_weights", "khat_threshold",
           "neutra_sample", "pareto_smooth", "weighted_expectation"]
