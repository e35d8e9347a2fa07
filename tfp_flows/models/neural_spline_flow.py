"""The neural spline flow preset: rational-quadratic spline couplings or autoregressive layers."""

from tfp_flows import flow
from tfp_flows import layers

__all__ = ["NeuralSplineFlow"]

_LINEAR = ("lu", "permute")


def NeuralSplineFlow(event_dims, num_layers=5, num_bins=8, bound=3.0,  # pylint: disable=invalid-name
                     hidden_units=(128, 128), autoregressive=False, context_dims=None,
                     linear="lu", actnorm=True, num_bits=None, seed=0,
                     name="neural_spline_flow"):
  """A neural spline flow over vectors of length `event_dims`, as a `FlowModel`.

  Data side first: optionally `Dequantize(num_bits)` for integer data, optionally an
  `ActNorm` (data-initialised, so the data lands inside the spline bound), then
  `num_layers` x [linear mixing (`InvertibleConv1x1`, an LU-parameterised learned
  matrix, or a fixed reversal `Permute`), spline transform], where the transform is a
  `SplineCoupling` (alternating halves) or, with `autoregressive=True`, a
  `SplineAutoregressive` (MAF direction: `log_prob` and `fit` cost one MADE pass per
  layer; sampling costs `event_dims` passes). With `context_dims` every transform is
  conditional: `log_prob(x, context)`, `sample(n, context=...)`, `fit(x, context)`.

  Reference: Durkan, Bekasov, Murray, Papamakarios. Neural Spline Flows.
  https://arxiv.org/abs/1906.04032

  Args:
    event_dims: length of the data vectors.
    num_layers: number of spline transforms.
    num_bins: spline bins K.
    bound: splines act on [-bound, bound], identity outside (3 suits standardised
      data; 5 for heavier-tailed tabular data).
    hidden_units: conditioner (MLP or MADE) hidden sizes.
    autoregressive: autoregressive spline layers instead of couplings.
    context_dims: length of the context vector of a conditional flow, or None.
    linear: "lu" (learned LU linear layers) or "permute" (fixed reversals).
    actnorm: whether to start with a data-initialised ActNorm.
    num_bits: for integer data in [0, 2**num_bits): a `Dequantize` layer first (with
      a logit margin of 1e-3), so `log_prob` is in the discrete data space.
    seed: seed of the random LU initialisations.
    name: model name.

  Raises:
    ValueError: for bad sizes, `linear`, or a coupling flow over 1 dimension.
  """
  event_dims = int(event_dims)
  if event_dims < 1 or int(num_layers) < 1:
    raise ValueError(f"event_dims and num_layers must be positive; got {event_dims} "
                     f"and {num_layers}.")
  if not autoregressive and event_dims < 2:
    raise ValueError("A coupling flow needs event_dims >= 2; use autoregressive=True "
                     "for one-dimensional data.")
  if linear not in _LINEAR:
    raise ValueError(f"linear must be one of {_LINEAR}; got {linear!r}.")
  conditional = context_dims is not None
  if conditional and (isinstance(context_dims, bool) or int(context_dims) != context_dims
                      or context_dims < 1):
    raise ValueError(f"context_dims must be a positive int (or None); got {context_dims!r}.")
  flow_layers = []
  if num_bits is not None:
    flow_layers.append(layers.Dequantize(num_bits=num_bits, alpha=1e-3))
  if actnorm:
    flow_layers.append(layers.ActNorm())
  for i in range(int(num_layers)):
    if event_dims > 1:
      flow_layers.append(layers.InvertibleConv1x1(lu=True, seed=seed + i)
                         if linear == "lu" else layers.Permute("reversed"))
    if autoregressive:
      flow_layers.append(layers.SplineAutoregressive(
          num_bins=num_bins, bound=bound, hidden_units=hidden_units,
          order="natural" if i % 2 == 0 else "reversed", conditional=conditional))
    else:
      flow_layers.append(layers.SplineCoupling(
          num_bins=num_bins, bound=bound, hidden_units=hidden_units, reverse=i % 2 == 1,
          conditional=conditional))
  return flow.FlowModel(flow_layers, event_shape=[event_dims],
                        context_shape=None if context_dims is None else [int(context_dims)],
                        name=name)
