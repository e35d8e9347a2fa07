"""The neural spline flow preset: rational-quadratic spline couplings or autoregressive layers."""

from tfp_flows import flow
from tfp_flows import layers
from tfp_flows.bijectors import coupling_scan
from tfp_flows.layers import spline_coupling
from tfp_flows.models import _aliases
from tfp_flows.models import _dtype

__all__ = ["NeuralSplineFlow"]

_LINEAR = ("lu", "permute")


def NeuralSplineFlow(event_dims=None, num_layers=None, num_bins=8, bound=3.0,  # pylint: disable=invalid-name
                     hidden_units=(128, 128), autoregressive=False, context_dims=None,
                     linear="lu", actnorm=True, num_bits=None, seed=0,
                     name="neural_spline_flow", *, event_shape=None, num_blocks=None,
                     context_shape=None, conditioner_layout="stacked", scan_blocks=False,
                     dtype=None):
  """A neural spline flow over vectors `[D]`, as a `FlowModel`.

  Data side first: optionally `Dequantize(num_bits)` for integer data, optionally an
  `ActNorm` (data-initialised, so the data lands inside the spline bound), then
  `num_blocks` x [linear mixing (`InvertibleConv1x1`, an LU-parameterised learned
  matrix, or a fixed `Permute`), spline transform], where the transform is a
  `SplineCoupling` (alternating halves) or, with `autoregressive=True`, a
  `SplineAutoregressive` (MAF direction: `log_prob` and `fit` cost one MADE pass per
  layer; sampling costs D passes). With a context shape `[C]` every transform is
  conditional: `log_prob(x, context)`, `sample(n, context=...)`, `fit(x, context)`.

  Reference: Durkan, Bekasov, Murray, Papamakarios. Neural Spline Flows.
  https://arxiv.org/abs/1906.04032

  `event_shape`, `num_blocks` and `context_shape` are the library's spellings (those of
  `FlowModel` and the other presets); `event_dims=D`, `num_layers` and
  `context_dims=C` are older aliases for `event_shape=[D]`, `num_blocks` and
  `context_shape=[C]`. Pass one spelling of each.

  Args:
    event_dims: older alias: D, for `event_shape=[D]`.
    num_layers: older alias of `num_blocks`.
    num_bins: spline bins K.
    bound: splines act on [-bound, bound], identity outside (3 suits standardised
      data; 5 for heavier-tailed tabular data).
    hidden_units: conditioner (MLP or MADE) hidden sizes.
    autoregressive: autoregressive spline layers instead of couplings.
    context_dims: older alias: C, for `context_shape=[C]`.
    linear: "lu" (learned LU linear layers; the couplings alternate halves and the
      autoregressive layers orders) or "permute" (a fixed permutation before every
      transform, which alternates them: before a coupling, a rotation by half that
      brings the entries the last coupling moved to the front, where this one, which
      moves the second half, conditions on them; before an autoregressive layer, in
      natural order, a reversal).
    actnorm: whether to start with a data-initialised ActNorm.
    num_bits: for integer data in [0, 2**num_bits): a `Dequantize` layer first (with
      a logit margin of 1e-3), so `log_prob` is in the discrete data space.
    seed: seed of the random LU initialisations.
    name: model name.
    event_shape: `[D]`, the shape of one data vector (required, in this spelling or as
      `event_dims`).
    num_blocks: number of [linear mixing, spline transform] blocks (default 5).
    context_shape: `[C]`, the shape of one context vector of a conditional flow, or
      None.
    conditioner_layout: the couplings' MLP weight layout, "stacked" or "dense" (see
      `tfp_flows.nets.MLP`); "dense" loads weights-only files (`save_weights`) written
      before the stacked layout existed. `.keras` files need nothing: they keep theirs.
    scan_blocks: with `linear="permute"` couplings, hold the blocks as one
      `tfp_flows.layers.CouplingScan`: the same transform, with each conditioner weight
      stacked over the blocks and the blocks run as one loop, which compiles faster and
      trains a little slower (see `CouplingScan`).
    dtype: the dtype policy of every layer and of the model: None for Keras' global one
      (`keras.config.set_floatx`), "float32" or "float64". Under a global mixed precision
      policy pass "float32": flows compute in one float type.

  Raises:
    ValueError: for bad sizes, `linear`, a coupling flow over 1 dimension, an
      argument passed in both spellings, or `scan_blocks` with LU or autoregressive
      layers.
  """
  event_dims = _vector_size("event_shape", event_shape, "event_dims", event_dims)
  if event_dims is None:
    raise ValueError("NeuralSplineFlow needs the data shape: pass event_shape=[D].")
  event_dims = int(event_dims)
  context_dims = _vector_size("context_shape", context_shape, "context_dims", context_dims)
  num_blocks = _aliases.resolve("num_blocks", num_blocks, "num_layers", num_layers, 5)
  if event_dims < 1 or int(num_blocks) < 1:
    raise ValueError(f"event_dims and num_blocks must be positive; got {event_dims} "
                     f"and {num_blocks}.")
  if not autoregressive and event_dims < 2:
    raise ValueError("A coupling flow needs event_dims >= 2 (event_shape [D] with "
                     "D >= 2); use autoregressive=True for one-dimensional data.")
  if linear not in _LINEAR:
    raise ValueError(f"linear must be one of {_LINEAR}; got {linear!r}.")
  if autoregressive and conditioner_layout != "stacked":
    raise ValueError("conditioner_layout applies to coupling layers' MLPs; autoregressive "
                     f"layers use MADE. Got {conditioner_layout!r} with autoregressive=True.")
  if scan_blocks and conditioner_layout != "stacked":
    raise ValueError("scan_blocks=True stacks the couplings' MLP weights over the blocks; "
                     f"conditioner_layout must be 'stacked' with it. Got {conditioner_layout!r}.")
  if scan_blocks and (linear != "permute" or autoregressive):
    raise ValueError("scan_blocks=True runs identical [rotation, coupling] blocks as one loop: "
                     "pass linear='permute' and autoregressive=False with it; got "
                     f"linear={linear!r}, autoregressive={autoregressive!r}.")
  conditional = context_dims is not None
  dtype = _dtype.layer_arguments("NeuralSplineFlow", dtype)
  if conditional and (isinstance(context_dims, bool) or int(context_dims) != context_dims
                      or context_dims < 1):
    raise ValueError("context_dims must be a positive int (the C of context_shape=[C]), or "
                     f"None; got {context_dims!r}.")
  flow_layers = []
  if num_bits is not None:
    flow_layers.append(layers.Dequantize(num_bits=num_bits, alpha=1e-3, **dtype))
  if actnorm:
    flow_layers.append(layers.ActNorm(**dtype))
  if scan_blocks:
    flow_layers.append(layers.CouplingScan(
        int(num_blocks), spline_coupling.spline_transformer(num_bins, bound, False),
        hidden_units=hidden_units, conditional=conditional, **dtype))
  # The fixed permutations alternate the halves (a rotation by half, see CouplingScan)
  # and the orders (a reversal); alternating them in the transforms too would undo it.
  permutation = "reversed" if autoregressive else coupling_scan.half_rotation(event_dims)
  for i in range(0 if scan_blocks else int(num_blocks)):
    alternate = i % 2 == 1 and linear == "lu"
    if event_dims > 1:
      flow_layers.append(layers.InvertibleConv1x1(lu=True, seed=seed + i, **dtype)
                         if linear == "lu" else layers.Permute(permutation, **dtype))
    if autoregressive:
      flow_layers.append(layers.SplineAutoregressive(
          num_bins=num_bins, bound=bound, hidden_units=hidden_units,
          order="reversed" if alternate else "natural", conditional=conditional,
          **dtype))
    else:
      flow_layers.append(layers.SplineCoupling(
          num_bins=num_bins, bound=bound, hidden_units=hidden_units, reverse=alternate,
          conditional=conditional, conditioner_layout=conditioner_layout, **dtype))
  return flow.FlowModel(flow_layers, event_shape=[event_dims],
                        context_shape=None if context_dims is None else [int(context_dims)],
                        name=name, **dtype)


def _vector_size(name, shape, alias, size):
  """D from `name=[D]` or its older alias `alias=D` (None if neither is given).

  Raises:
    ValueError: if both are given, or `shape` is not a one-element list.
  """
  if shape is not None:
    shape = list(shape)
    if len(shape) != 1:
      raise ValueError(f"NeuralSplineFlow models vectors: {name} must be [D]; got "
                       f"{shape!r}.")
    shape = shape[0]
  return _aliases.resolve(name, shape, alias, size, None)
