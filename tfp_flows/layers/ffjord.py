"""Keras FFJORD layer: a continuous normalizing flow with a learned vector field."""

import math

import keras
import tensorflow as tf

from tfp_flows import nets
from tfp_flows.bijectors import continuous
from tfp_flows.layers import _replica_seed
from tfp_flows.layers import flow_layer
from tfp_flows.nets import time_conditioned
from tfp_flows.numerics import checks
from tfp_flows.numerics import estimators
from tfp_flows.numerics import ode
from tfp_flows.numerics import probes
from tfp_flows.numerics.optimal_transport import sinkhorn_pairing

__all__ = ["FFJORD"]


@keras.saving.register_keras_serializable(package="tfp_flows")
class FFJORD(flow_layer.FlowLayer):
  """A continuous normalizing flow block (FFJORD) whose vector field is a Keras network.

  The bijector is `tfp_flows.bijectors.ContinuousFlow` over the field
  `f(t, z) = net(z, t)`: `TimeConditionedMLP` for vectors `[D]`,
  `TimeConditionedConvNet` for images `[H, W, C]` (zero last layer: the identity at
  initialisation; `time_conditioning` chooses how t enters). `log_prob` solves the ODE data -> base once, with the log-det
  integrated alongside; sampling solves base -> data.

  Which trace estimator is in effect depends on the mode (`trace_mode(training)`), by
  the rule of `trace_estimator` (a `tfp_flows.numerics.estimators.TraceEstimator`, made
  from `trace`, `noise` and `exact_max_dims` unless given):

  * training: `trace` ("hutchinson" by default, one probe per row drawn per step from
    the layer's `keras.random.SeedGenerator`, independently on every `tf.distribute`
    replica, and fixed along the trajectory);
  * evaluation (`log_prob`, `.bijector`, export): "exact" when the event has at most
    `exact_max_dims` entries, else Hutchinson with one Rademacher probe per point,
    keyed by the point's values and a fixed seed: deterministic, the same for a point
    alone or in any batch, unbiased, but a one-probe estimate per point (its error
    averages out over a test set; raise `exact_max_dims` for exact per-point values).

  In training, `kinetic_weight` and `jacobian_weight` add the regularisers of Finlay
  et al. 2020 as Keras losses (`weight * batch mean of the integral`), and the number
  of vector-field evaluations of the last forward solve (not counting the adjoint's
  backward solve, which runs in the gradient) is reported as the statistic "nfe"
  (`FlowModel` logs it as a metric). Once a gradient of that call has been built (in
  the same graph), `last_statistics` also has "adjoint_nfe", the evaluations of the
  adjoint's backward solve; `fit` computes its metrics before the gradient, so it logs
  "nfe" only. `flow_matching_loss` trains the same field without
  solving the ODE (Lipman et al. 2022).

  Args:
    hidden_units: hidden sizes (vectors) or hidden channels (images) of the field.
    activation: smooth hidden activation.
    trace: training trace estimator, "hutchinson" or "exact".
    noise: Hutchinson probes, "rademacher" or "normal" ("gaussian" is accepted too).
    solver: "dopri5" (adaptive), "rk4" or "euler" (fixed steps).
    rtol, atol: tolerances of "dopri5".
    max_num_steps: step cap of "dopri5" (finite; rows that exceed it come back NaN in
      every mode, and also raise with `validate_args` where TensorFlow can raise).
    num_steps: steps of "rk4" / "euler".
    gradient: "adjoint" (memory flat in the steps) or "backprop" (through the steps).
    end_time: integration time T.
    learn_end_time: make T trainable (T = s^2 with s initialised at sqrt(end_time)).
    kinetic_weight, jacobian_weight: regulariser weights (0 disables).
    exact_max_dims: largest event size evaluated with the exact trace.
    trace_estimator: a `TraceEstimator` (or its config dict) for the whole rule; it
      takes the place of `trace`, `noise` and `exact_max_dims`.
    validate_args: also raise when the solver does not finish (eagerly and in graphs;
      the unfinished rows are NaN in every mode, XLA included).
    seed: seed of the layer's SeedGenerator (None: from Keras' global seed).
    time_conditioning: how t enters the field: "concat_squash" (every layer gated and
      shifted by t, FFJORD's default) or "concat" (t appended to the field's input,
      as in the examples of TFP's `tfb.FFJORD`).
  """

  def __init__(self, hidden_units=(64, 64, 64), activation="softplus", trace="hutchinson",
               noise="rademacher", solver="dopri5", rtol=1e-5, atol=1e-5,
               max_num_steps=1000, num_steps=None, gradient="adjoint", end_time=1.0,
               learn_end_time=False, kinetic_weight=0.0, jacobian_weight=0.0,
               exact_max_dims=32, trace_estimator=None, validate_args=False, seed=None,
               time_conditioning="concat_squash", **kwargs):
    super().__init__(**kwargs)
    checks.one_of("time_conditioning", time_conditioning, time_conditioned.TIME_CONDITIONINGS)
    if trace_estimator is None:
      trace_estimator = estimators.TraceEstimator(training=trace, probe=noise,
                                                  exact_max_dims=exact_max_dims)
    self.trace_estimator = estimators.TraceEstimator.from_spec(trace_estimator)
    checks.one_of("gradient", gradient, ode.GRADIENTS)
    if solver in ("rk4", "euler") and num_steps is None:
      num_steps = 8
    ode.check_solver_args(solver, rtol, atol, max_num_steps, num_steps)
    if not float(end_time) > 0:
      raise ValueError(f"end_time must be positive; got {end_time!r}.")
    if float(kinetic_weight) < 0 or float(jacobian_weight) < 0:
      raise ValueError("kinetic_weight and jacobian_weight must be non-negative; got "
                       f"{kinetic_weight!r} and {jacobian_weight!r}.")
    self.hidden_units = tuple(int(u) for u in hidden_units)
    self.activation = activation
    self.time_conditioning = time_conditioning
    self.solver = solver
    self.rtol = float(rtol)
    self.atol = float(atol)
    self.max_num_steps = int(max_num_steps)
    self.num_steps = None if num_steps is None else int(num_steps)
    self.gradient = gradient
    self.end_time = float(end_time)
    self.learn_end_time = bool(learn_end_time)
    self.kinetic_weight = float(kinetic_weight)
    self.jacobian_weight = float(jacobian_weight)
    self.validate_args = bool(validate_args)
    self.seed = seed
    self.seed_generator = keras.random.SeedGenerator(seed, name="ffjord_seed")
    self._last_statistics = {}
    self._keep_backward_statistics({})

  def build(self, input_shape):
    self._event_shape = tuple(int(d) for d in input_shape[1:])
    if len(self._event_shape) == 1:
      self.net = nets.TimeConditionedMLP(self.hidden_units, self.activation,
                                         time_conditioning=self.time_conditioning,
                                         dtype=self.dtype_policy, name="vector_field")
    elif len(self._event_shape) == 3:
      self.net = nets.TimeConditionedConvNet(self.hidden_units, self.activation,
                                             time_conditioning=self.time_conditioning,
                                             dtype=self.dtype_policy, name="vector_field")
    else:
      raise ValueError(f"FFJORD takes vectors [D] or images [H, W, C]; got event shape "
                       f"{self._event_shape}.")
    self.net.build((None, *self._event_shape))
    if self.learn_end_time:
      self.sqrt_end_time = self.add_weight(
          shape=(), initializer=keras.initializers.Constant(math.sqrt(self.end_time)),
          name="sqrt_end_time")
    super().build(input_shape)

  @property
  def event_size(self):
    return math.prod(self._event_shape)

  @property
  def trace(self):
    """The training trace estimator, "hutchinson" or "exact"."""
    return self.trace_estimator.training

  @property
  def noise(self):
    """The training probes, "rademacher" or "normal"."""
    return self.trace_estimator.probe

  @property
  def exact_max_dims(self):
    return self.trace_estimator.exact_max_dims

  @property
  def integration_time(self):
    """T, a tensor when learned."""
    if self.learn_end_time:
      return tf.square(tf.convert_to_tensor(self.sqrt_end_time))
    return self.end_time

  def trace_mode(self, training=False):
    """The trace estimator in effect: "exact", "hutchinson" or "hutchinson (keyed probe)".

    "hutchinson (keyed probe)" is evaluation above `exact_max_dims`: one Rademacher probe
    per point, a function of the point's values and a fixed seed.
    """
    return self.trace_estimator.describe(training, self.event_size)

  def vector_field(self, t, z):
    return self.net(z, t)

  def vector_field_with_tangents(self, t, z, tangents):
    """`(f(t, z), J v)`: the net's forward-mode products (`ContinuousFlow`'s `jvp_fn`)."""
    return self.net.call_with_tangents(z, t, tangents)

  def make_bijector(self, training=False, seed=None):
    estimator = self.trace_estimator.choose(training, self.event_size)
    if estimator.method == "hutchinson" and estimator.seed is None and seed is None:
      seed = self._draw_seed()
    return continuous.ContinuousFlow(
        self.vector_field, event_ndims=len(self._event_shape),
        # A learned T is read at each solve, so a bijector held across steps stays current.
        end_time=(lambda: self.integration_time) if self.learn_end_time else self.end_time,
        trace=estimator, seed=seed,
        solver=self.solver, rtol=self.rtol, atol=self.atol,
        max_num_steps=self.max_num_steps, num_steps=self.num_steps,
        gradient=self.gradient,
        jvp_fn=self.vector_field_with_tangents if self.net.supports_tangents else None,
        validate_args=self.validate_args,
        dtype=self.compute_dtype, name=self.bijector_name())

  def _draw_seed(self):
    return _replica_seed.draw_replica_seed(self.seed_generator)

  def statistic_names(self):
    return ("nfe",)

  @property
  def last_statistics(self):
    """Statistics of the last call: {"nfe": vector-field evaluations of the solve}.

    With "adjoint_nfe", the evaluations of the adjoint's backward solve, once the
    gradient of that call has been built (read it after `tape.gradient`).
    """
    statistics = dict(self._last_statistics)
    if "num_evaluations" in self._last_backward_statistics:
      statistics["adjoint_nfe"] = tf.cast(
          self._last_backward_statistics["num_evaluations"], tf.float32)
    return statistics

  def _keep_backward_statistics(self, statistics):
    # The very dict the gradient fills later: Keras would track (copy) a dict
    # assigned as a layer attribute, and the copy would never see the backward solve.
    object.__setattr__(self, "_last_backward_statistics", statistics)

  def call(self, inputs, context=None, training=None):
    training = bool(training)
    bijector = self.make_bijector(training=training)
    regularize = training and (self.kinetic_weight > 0 or self.jacobian_weight > 0)
    result = bijector.solve(inputs, "inverse", regularize=regularize)
    if regularize:
      if self.kinetic_weight > 0:
        self.add_loss(self.kinetic_weight * tf.reduce_mean(result.kinetic_energy))
      if self.jacobian_weight > 0:
        self.add_loss(self.jacobian_weight * tf.reduce_mean(result.jacobian_norm))
    self._last_statistics = {"nfe": tf.cast(result.num_evaluations, tf.float32)}
    self._keep_backward_statistics(result.backward_statistics)
    return result.value, result.log_det

  def flow_matching_loss(self, x, seed=None, optimal_transport=False):
    """Conditional flow-matching loss of the field on data-side points `x`.

    With base points `z ~ N(0, I)`, times `t ~ U(0, T)` and the straight path
    `x_t = (1 - t/T) z + (t/T) x`, whose velocity is `(x - z) / T`, the loss is
    `mean |f(t, x_t) - (x - z)/T|^2` (Lipman et al. 2022, with sigma_min = 0). Its
    minimiser is the field whose flow carries N(0, I) to the data, so the trained
    field is evaluated as a likelihood exactly like one trained by maximum likelihood.
    With `optimal_transport`, each data point is paired with a base point drawn from an
    entropic optimal-transport plan of the minibatch (Tong et al. 2023), which
    straightens the learned paths and lowers the solver's step count.

    Args:
      x: `[N, *event]` data-side points of this layer.
      seed: stateless `[2]` seed (default: drawn from the layer's SeedGenerator).
      optimal_transport: pair the minibatch by entropic OT.

    Returns:
      scalar loss.
    """
    if self.learn_end_time:
      raise ValueError("flow matching needs a fixed end time: build the layer with "
                       "learn_end_time=False.")
    seed = self._draw_seed() if seed is None else seed
    seeds = probes.split_seed(seed, 3)
    x = tf.convert_to_tensor(x, self.compute_dtype)
    z = tf.random.stateless_normal(tf.shape(x), seeds[0], dtype=x.dtype,
                                   alg=probes.RNG_ALGORITHM)
    if optimal_transport:
      z = sinkhorn_pairing(x, z, seeds[2])
    u = tf.random.stateless_uniform(tf.shape(x)[:1], seeds[1], dtype=x.dtype,
                                    alg=probes.RNG_ALGORITHM)
    column = tf.reshape(u, [-1] + [1] * (x.shape.rank - 1))
    x_t = (1.0 - column) * z + column * x
    end_time = tf.constant(self.end_time, x.dtype)
    target = (x - z) / end_time
    return tf.reduce_mean(tf.square(self.vector_field(u * end_time, x_t) - target))

  def get_config(self):
    return {**super().get_config(), "hidden_units": list(self.hidden_units),
            "activation": self.activation, "time_conditioning": self.time_conditioning,
            "trace": self.trace, "noise": self.noise,
            "solver": self.solver, "rtol": self.rtol, "atol": self.atol,
            "max_num_steps": self.max_num_steps, "num_steps": self.num_steps,
            "gradient": self.gradient, "end_time": self.end_time,
            "learn_end_time": self.learn_end_time, "kinetic_weight": self.kinetic_weight,
            "jacobian_weight": self.jacobian_weight, "exact_max_dims": self.exact_max_dims,
            "trace_estimator": self.trace_estimator.get_config(),
            "validate_args": self.validate_args, "seed": self.seed}

