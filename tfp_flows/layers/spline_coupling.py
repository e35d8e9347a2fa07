"""Keras rational-quadratic spline coupling layer (neural spline flow coupling)."""

import keras

from tfp_flows.bijectors import spline
from tfp_flows.layers import coupling

__all__ = ["SplineCoupling", "spline_transformer"]


def spline_transformer(num_bins, bound, circular):
  """The rational-quadratic transformer of a spline layer (validates its arguments)."""
  if circular:
    return spline.CircularRationalQuadraticTransformer(num_bins=num_bins, bound=bound)
  return spline.RationalQuadraticTransformer(num_bins=num_bins, bound=bound)


@keras.saving.register_keras_serializable(package="tfp_flows")
class SplineCoupling(coupling.CouplingLayer):
  """Rational-quadratic spline coupling (Durkan et al. 2019, https://arxiv.org/abs/1906.04032).

  `y_b = RQS(x_b; h(x_a))`: K-bin monotonic rational-quadratic splines on
  [-bound, bound] with linear (identity) tails, parameters from the conditioner (MLP
  for vectors, Glow conv net for images). Both directions cost one conditioner pass.
  Standardise the data (e.g. an `ActNorm` in front) so most of it lies inside the bound.

  Args:
    num_bins: spline bins K.
    bound: the spline acts on [-bound, bound]; identity outside.
    circular: periodic spline on [-bound, bound] (for angles) instead of linear tails.
    **kwargs: `CouplingLayer` arguments (mask, reverse, hidden sizes, conditional).
  """

  def __init__(self, num_bins=8, bound=3.0, circular=False, **kwargs):
    super().__init__(**kwargs)
    self.num_bins = num_bins
    self.bound = float(bound)
    self.circular = bool(circular)
    self.make_transformer()  # validates now: num_bins=2.5 is an error, not 2 bins
    self.num_bins = int(num_bins)

  def make_transformer(self):
    return spline_transformer(self.num_bins, self.bound, self.circular)

  def get_config(self):
    return {**super().get_config(), "num_bins": self.num_bins, "bound": self.bound,
            "circular": self.circular}
