"""Keras rational-quadratic spline coupling layer (neural spline flow coupling)."""

import keras

from tfp_flows.layers import coupling
from tfp_flows.layers import transformer_spec

__all__ = ["SplineCoupling", "spline_transformer"]

spline_transformer = transformer_spec.spline_transformer


@keras.saving.register_keras_serializable(package="tfp_flows")
class SplineCoupling(transformer_spec.SplineArguments, coupling.Coupling):
  """Rational-quadratic spline coupling (Durkan et al. 2019, https://arxiv.org/abs/1906.04032).

  `y_b = RQS(x_b; h(x_a))`: K-bin monotonic rational-quadratic splines on
  [-bound, bound] with linear (identity) tails, parameters from the conditioner (MLP
  for vectors, Glow conv net for images). Both directions cost one conditioner pass.
  Standardise the data (e.g. an `ActNorm` in front) so most of it lies inside the bound.
  This is `Coupling(transformer=spline_transformer(num_bins, bound, circular), ...)`,
  with the transformer's arguments as the layer's own (and in its config).

  Args:
    num_bins: spline bins K.
    bound: the spline acts on [-bound, bound]; identity outside.
    circular: periodic spline on [-bound, bound] (for angles) instead of linear tails.
    **kwargs: `Coupling` arguments (mask, reverse, hidden sizes, conditional).
  """

  def __init__(self, num_bins=8, bound=3.0, circular=False, **kwargs):
    super().__init__(num_bins, bound, circular, **kwargs)
