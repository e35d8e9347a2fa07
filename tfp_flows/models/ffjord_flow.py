"""The FFJORD preset: a chain of continuous normalizing flow blocks."""

from tfp_flows import flow
from tfp_flows import layers
from tfp_flows import objectives
from tfp_flows.models import _aliases
from tfp_flows.models import _dtype

__all__ = ["FFJORDFlow"]

_OBJECTIVES = ("maximum_likelihood", "flow_matching")


def FFJORDFlow(event_shape, num_blocks=1, hidden_units=(64, 64, 64), trace="hutchinson",  # pylint: disable=invalid-name
               solver="dopri5", rtol=1e-5, atol=1e-5, actnorm=True, num_bits=None,
               training=None, optimal_transport=False,
               gradient="adjoint", max_num_steps=1000, num_steps=None,
               kinetic_weight=0.0, jacobian_weight=0.0, learn_end_time=False,
               end_time=1.0, activation="softplus", name="ffjord_flow", *, objective=None,
               time_conditioning="concat_squash", dtype=None):
  """A continuous normalizing flow (FFJORD, Grathwohl et al. 2019) as a `FlowModel`.

  Data side first: optionally `Dequantize(num_bits)` for integer data, then
  `num_blocks` x [`ActNorm` (if `actnorm`), `FFJORD`]. Each block integrates its own
  time-conditioned vector field (an MLP of concat-squash layers for vectors `[D]`,
  3x3 concat-squash convolutions for images `[H, W, C]`) from t = 0 to `end_time`.
  The base is a standard normal, so the flow composes with stock TFP like any other
  (`model.distribution` is a `tfd.TransformedDistribution`).

  Training (`objective`, as `FlowModel` spells it; `training` is its older alias, pass
  one of the two):

  * "maximum_likelihood": `fit` solves the ODE data -> base with the log-det
    (Hutchinson trace by default, exact with `trace="exact"`) and backpropagates by
    the adjoint method (or through the solver, `gradient="backprop"`); the number of
    vector-field evaluations is logged as `nfe`; `kinetic_weight` and
    `jacobian_weight` add the regularisers of Finlay et al. 2020, which shorten the
    solves.
  * "flow_matching" (Lipman et al. 2022): `fit` regresses the vector field on straight
    paths between base and data without solving the ODE (`optimal_transport` pairs each
    batch by entropic OT). Needs `num_blocks=1`. `log_prob` afterwards is the exact
    FFJORD likelihood of the learned field, and `sample` integrates the ODE.

  Evaluation (`log_prob`, export) is deterministic: the exact trace for events of at
  most 32 entries, else a Hutchinson estimate with one probe per point keyed by its values.

  Args:
    event_shape: `[D]` or `[H, W, C]`.
    num_blocks: number of CNF blocks.
    hidden_units: hidden sizes (channels for images) of each vector field.
    trace: training trace estimator, "hutchinson" or "exact".
    solver: "dopri5", "rk4" or "euler".
    rtol, atol: tolerances of "dopri5".
    actnorm: an ActNorm before each block.
    num_bits: for integer data in [0, 2**num_bits), a `Dequantize` layer first.
    training: older alias of `objective`.
    optimal_transport: minibatch OT pairing for flow matching.
    gradient: "adjoint" or "backprop".
    max_num_steps: step cap of "dopri5".
    num_steps: steps of "rk4" / "euler" (default 8).
    kinetic_weight, jacobian_weight: regulariser weights.
    learn_end_time: train the integration time T.
    end_time: T (initial value when learned).
    activation: smooth activation of the vector fields.
    name: model name.
    objective: "maximum_likelihood" (default) or "flow_matching", or a
      `tfp_flows.objectives.Objective` (see `FlowModel`).
    time_conditioning: how t enters each field, "concat_squash" or "concat" (see
      `tfp_flows.layers.FFJORD`).
    dtype: the dtype policy of every layer and of the model: None for Keras' global one
      (`keras.config.set_floatx`), "float32" or "float64". Under a global mixed precision
      policy pass "float32": flows compute in one float type.

  Raises:
    ValueError: for bad shapes, counts, flow matching with several blocks, or both
      `objective` and `training`.
  """
  event_shape = [int(d) for d in event_shape]
  if len(event_shape) not in (1, 3) or min(event_shape) < 1:
    raise ValueError(f"event_shape must be [D] or [H, W, C]; got {event_shape}.")
  if int(num_blocks) < 1:
    raise ValueError(f"num_blocks must be positive; got {num_blocks!r}.")
  spelled = "objective" if training is None else "training"
  objective = _aliases.resolve("objective", objective, "training", training,
                               "maximum_likelihood")
  if not isinstance(objective, objectives.Objective) and objective not in _OBJECTIVES:
    raise ValueError(f"{spelled} must be one of {_OBJECTIVES} or a "
                     f"tff.objectives.Objective; got {objective!r}.")
  if (objective == "flow_matching" or isinstance(objective, objectives.FlowMatching)) and (
      int(num_blocks) != 1):
    raise ValueError(f"{spelled}='flow_matching' learns one vector field: use num_blocks=1 "
                     f"(got {num_blocks}).")
  dtype = _dtype.layer_arguments("FFJORDFlow", dtype)
  flow_layers = []
  if num_bits is not None:
    flow_layers.append(layers.Dequantize(num_bits=num_bits, alpha=1e-3, **dtype))
  for _ in range(int(num_blocks)):
    if actnorm:
      flow_layers.append(layers.ActNorm(**dtype))
    flow_layers.append(layers.FFJORD(
        hidden_units=hidden_units, activation=activation,
        time_conditioning=time_conditioning, trace=trace, solver=solver,
        rtol=rtol, atol=atol, max_num_steps=max_num_steps, num_steps=num_steps,
        gradient=gradient, end_time=end_time, learn_end_time=learn_end_time,
        kinetic_weight=kinetic_weight, jacobian_weight=jacobian_weight, **dtype))
  return flow.FlowModel(flow_layers, event_shape=event_shape, name=name,
                        objective=objective, optimal_transport=optimal_transport, **dtype)
