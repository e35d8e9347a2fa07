"""Continuous normalizing flows (neural ODEs, FFJORD) as a TFP bijector."""

import collections

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_flows.bijectors import _log_det_cache
from tfp_flows.bijectors import ode
from tfp_flows.estimators import trace as trace_estimators

__all__ = ["ContinuousFlow", "ContinuousFlowResult"]

tfb = tfp.bijectors
_TRACES = ("exact", "hutchinson")
_NOISES = ("rademacher", "gaussian")
_GRADIENTS = ("adjoint", "backprop")

ContinuousFlowResult = collections.namedtuple(
    "ContinuousFlowResult",
    ["value", "log_det", "kinetic_energy", "jacobian_norm", "num_evaluations", "success"])
ContinuousFlowResult.__doc__ = """One ODE solve of a `ContinuousFlow`.

Fields:
  value: the mapped tensor.
  log_det: `[N]` log|det d value / d input| of the map solved (None if not asked).
  kinetic_energy: `[N]` integral of |f(t, z)|^2 dt (None unless `regularize`).
  jacobian_norm: `[N]` integral of |df/dz|_F^2 dt, Hutchinson-estimated with the trace
    probe (exact with `trace="exact"`) (None unless `regularize`).
  num_evaluations: int32 scalar, vector-field evaluations of the solve.
  success: `[N]` bool, rows the solver finished within `max_num_steps`.
"""


class ContinuousFlow(tfb.Bijector):
  """A continuous normalizing flow: the time-T map of `dz/dt = f(t, z)`.

  ```none
  forward  (base z(0) -> data z(T)):  integrate dz/dt = f(t, z) from t = 0 to T
  inverse  (data z(T) -> base z(0)):  integrate backwards from T to 0
  log-det:  d log|det dz(t)/dz(0)| / dt = tr(df/dz)   (instantaneous change of variables)
            fldj = int_0^T tr(df/dz(t, z(t))) dt,     ildj = -fldj at the preimage
  ```

  Value and log-det come out of one solve of the augmented state (z, log-det), which
  `inverse` stores in TFP's cache so `log_prob` solves once. Both directions cost the
  same (one ODE solve), so `log_prob` and `sample` are equally expensive; `forward`
  alone (sampling) skips the trace.

  Trace `tr(df/dz)`, per evaluation of f:

  * "exact": the dense Jacobian from its products with the D unit vectors: exact, cost
    and memory O(D) times one evaluation; for small events.
  * "hutchinson": `e^T (df/dz) e` with one probe e per row (Rademacher or Gaussian),
    drawn once per solve from the stateless `seed` and held fixed along the trajectory
    so the integrand is a smooth function of t (Grathwohl et al. 2019): unbiased, one
    Jacobian product per evaluation. With S = (J + J^T) / 2 the symmetric part,
    Rademacher probes have the smaller variance, `2 sum_{i != j} S_ij^2` against
    Gaussian's `2 |S|_F^2` (the antisymmetric part of J adds none).

  The products are forward-mode `J v` when a `jvp_fn` is given (the nets of
  `tfp_flows.nets` provide one, `call_with_tangents`): f and K tangents in one pass,
  about 1 + K passes of the net's cost. The fallback for a plain callable is
  reverse-mode `v^T J`: a forward and a backward pass, over D copies of each row for
  the exact trace (2 D passes against 1 + D). Hutchinson costs 2 passes either way,
  but the adjoint's backward solve differentiates the products once more, and
  reverse-over-forward is cheaper than reverse-over-reverse. Measured on the 2-D
  benchmark (`benchmarks/ffjord_benchmark.py`): exact-trace `log_prob` about 2x
  faster, an adjoint training step about 1.2x.

  Solvers (`tfp_flows.bijectors.ode`): adaptive "dopri5" with row-wise steps,
  `rtol`/`atol` and a mandatory finite `max_num_steps`; fixed-step "rk4" and "euler"
  with `num_steps`. Gradients: "adjoint" (a backward solve, memory flat in the number
  of steps) or "backprop" (through the solver's steps: faster, exact for the
  discretisation, memory growing with the steps — under XLA with `max_num_steps`).

  With `regularize=True` in `solve` the integrals of the kinetic energy `|f|^2` and of
  the Jacobian's squared Frobenius norm ride along in the same solve (Finlay et al.
  2020, "How to train your neural ODE").

  A row the adaptive solver cannot finish within `max_num_steps` is never silent: with
  `validate_args=True` the call raises `InvalidArgumentError` (outside XLA, which drops
  assertions); in every case that row comes back as NaN (others are unaffected).

  #### References

  [1]: Chen, Rubanova, Bettencourt, Duvenaud. Neural Ordinary Differential Equations.
       https://arxiv.org/abs/1806.07366
  [2]: Grathwohl, Chen, Bettencourt, Sutskever, Duvenaud. FFJORD: Free-form Continuous
       Dynamics for Scalable Reversible Generative Models. https://arxiv.org/abs/1810.01367
  [3]: Finlay, Jacobsen, Nurbekyan, Oberman. How to train your neural ODE.
       https://arxiv.org/abs/2002.02798
  """

  def __init__(self, vector_field, event_ndims=1, end_time=1.0, trace="exact",
               noise="rademacher", seed=None, solver="dopri5", rtol=1e-5, atol=1e-5,
               max_num_steps=1000, num_steps=None, gradient="adjoint", jvp_fn=None,
               content_keyed_probes=False, validate_args=False, dtype=tf.float32,
               name="continuous_flow"):
    """Creates the flow.

    Args:
      vector_field: callable `f(t, z)`, `t` a `[N]` tensor and `z` `[N, *event]`,
        returning `dz/dt` of z's shape (e.g. `tfp_flows.nets.TimeConditionedMLP`).
      event_ndims: rank of one event (1 vectors, 3 images).
      end_time: T > 0, a float or scalar tensor (a learned end time is a tensor).
      trace: "exact" or "hutchinson".
      noise: Hutchinson probes, "rademacher" or "gaussian".
      seed: stateless seed `[2]`, needed for "hutchinson".
      solver: "dopri5", "rk4" or "euler".
      rtol, atol: tolerances of "dopri5".
      max_num_steps: step cap of "dopri5" (finite; exceeding it is reported).
      num_steps: steps of "rk4" and "euler".
      gradient: "adjoint" or "backprop".
      jvp_fn: optional `jvp_fn(t, z, tangents) -> (f(t, z), J v)`, tangents
        `[K, N, *event]` and the products stacked alike: forward-mode Jacobian products
        for the trace (e.g. `lambda t, z, v: net.call_with_tangents(z, t, v)`); it must
        agree with `vector_field`. Without it the products are reverse-mode autodiff.
      content_keyed_probes: draw each row's Rademacher probe from the row's values at
        the start of the solve (`tfp_flows.estimators.trace.content_keyed_probes`)
        rather than its batch index, so a point's Hutchinson log-det does not depend on
        the batch it is in.
      validate_args: raise when the solver does not finish; check inputs are finite.
      dtype: float dtype.
      name: bijector name.

    Raises:
      ValueError: for bad arguments, or a Hutchinson trace without a seed.
    """
    parameters = dict(locals())
    if not callable(vector_field):
      raise ValueError(f"vector_field must be callable f(t, z); got {vector_field!r}.")
    if trace not in _TRACES:
      raise ValueError(f"trace must be one of {_TRACES}; got {trace!r}.")
    if noise not in _NOISES:
      raise ValueError(f"noise must be one of {_NOISES}; got {noise!r}.")
    if content_keyed_probes and noise != "rademacher":
      raise ValueError("content_keyed_probes draws Rademacher probes; got "
                       f"noise={noise!r}.")
    if trace == "hutchinson" and seed is None:
      raise ValueError("trace='hutchinson' draws probes: pass a stateless seed (a [2] int "
                       "tensor), or use trace='exact'.")
    if jvp_fn is not None and not callable(jvp_fn):
      raise ValueError(f"jvp_fn must be callable jvp_fn(t, z, tangents); got {jvp_fn!r}.")
    if gradient not in _GRADIENTS:
      raise ValueError(f"gradient must be one of {_GRADIENTS}; got {gradient!r}.")
    if int(event_ndims) < 1:
      raise ValueError(f"event_ndims must be at least 1; got {event_ndims!r}.")
    known_end_time = (tf.get_static_value(end_time) if tf.is_tensor(end_time)
                      else end_time)
    if known_end_time is not None and not np.all(np.asarray(known_end_time) > 0):
      raise ValueError(f"end_time must be positive; got {end_time!r}.")
    ode._check(solver, rtol, atol, max_num_steps, num_steps)  # pylint: disable=protected-access
    self._f = vector_field
    self._jvp_fn = jvp_fn
    self._end_time = end_time
    self._trace = trace
    self._noise = noise
    self._seed = seed
    self._content_keyed_probes = bool(content_keyed_probes)
    self._solver_kwargs = {"solver": solver, "rtol": rtol, "atol": atol,
                           "max_num_steps": max_num_steps, "num_steps": num_steps}
    self._gradient = gradient
    super().__init__(forward_min_event_ndims=int(event_ndims), dtype=tf.as_dtype(dtype),
                     validate_args=validate_args, parameters=parameters, name=name)

  @property
  def trace_method(self):
    return self._trace

  def _as_batch(self, x):
    event_ndims = self.forward_min_event_ndims
    shape = tf.shape(x)
    flat = tf.reshape(x, tf.concat([[-1], shape[tf.rank(x) - event_ndims:]], 0))
    flat.set_shape([None] + x.shape[x.shape.rank - event_ndims:].as_list())
    return flat, shape[:tf.rank(x) - event_ndims]

  def _probe(self, z):
    if self._content_keyed_probes:
      return trace_estimators.content_keyed_probes(z, self._seed)
    if self._noise == "gaussian":
      return tf.random.stateless_normal(tf.shape(z), self._seed, dtype=z.dtype)
    bits = tf.random.stateless_uniform(tf.shape(z), self._seed, minval=0, maxval=2,
                                       dtype=tf.int32)
    return tf.cast(2 * bits - 1, z.dtype)

  def _field_and_trace(self, t, z, probe, with_norm):
    """`f(t, z)`, `tr(df/dz)` per row and, if asked, `|df/dz|_F^2` (estimated alike)."""
    if self._jvp_fn is not None:
      return self._field_and_trace_forward_mode(t, z, probe, with_norm)
    if self._trace == "exact":
      # D copies of each row and one vector-Jacobian product with the D unit vectors
      # give the Jacobian's rows: the cost of D evaluations in one batched pass, and a
      # graph far smaller than a vectorised `batch_jacobian`.
      size = z.shape[1:].num_elements()
      copies = tf.repeat(z, size, axis=0)
      with tf.GradientTape() as tape:
        tape.watch(copies)
        f_copies = self._f(tf.repeat(t, size, axis=0), copies)
      units = tf.tile(tf.eye(size, dtype=z.dtype), [tf.shape(z)[0], 1])
      rows = tape.gradient(f_copies, copies, output_gradients=tf.reshape(
          units, tf.shape(copies)))
      rows = tf.reshape(rows, [-1, size, size])
      f = f_copies[::size]
      trace = tf.linalg.trace(rows)
      norm = tf.reduce_sum(tf.square(rows), axis=[1, 2]) if with_norm else None
      return f, trace, norm
    with tf.GradientTape() as tape:
      tape.watch(z)
      f = self._f(t, z)
    vjp = tape.gradient(f, z, output_gradients=probe)
    axes = list(range(1, z.shape.rank))
    trace = tf.reduce_sum(vjp * probe, axis=axes)
    norm = tf.reduce_sum(tf.square(vjp), axis=axes) if with_norm else None
    return f, trace, norm

  def _field_and_trace_forward_mode(self, t, z, probe, with_norm):
    """As `_field_and_trace`, from `jvp_fn`'s products `J v` (`E|J e|^2 = |J|_F^2`)."""
    axes = list(range(1, z.shape.rank))
    if self._trace == "exact":
      size = z.shape[1:].num_elements()
      units = tf.reshape(tf.eye(size, dtype=z.dtype), [size, 1] + z.shape[1:].as_list())
      tangents = tf.broadcast_to(units, tf.concat([[size], tf.shape(z)], 0))
      f, columns = self._jvp_fn(t, z, tangents)
      columns = tf.reshape(columns, [size, -1, size])
      trace = tf.linalg.trace(tf.transpose(columns, [1, 0, 2]))
      norm = tf.reduce_sum(tf.square(columns), axis=[0, 2]) if with_norm else None
      return f, trace, norm
    f, product = self._jvp_fn(t, z, probe[None])
    trace = tf.reduce_sum(product[0] * probe, axis=axes)
    norm = tf.reduce_sum(tf.square(product[0]), axis=axes) if with_norm else None
    return f, trace, norm

  def solve(self, value, direction="inverse", log_det=True, regularize=False):
    """Maps `value` with one ODE solve, with its log-det and regularisers if asked.

    Args:
      value: tensor `[..., *event]`.
      direction: "forward" (base -> data, t from 0 to T) or "inverse" (data -> base).
      log_det: also integrate the trace (the log-det of the map solved).
      regularize: also integrate the kinetic energy and the Jacobian norm.

    Returns:
      `ContinuousFlowResult` with batch shape `value`'s.
    """
    if direction not in ("forward", "inverse"):
      raise ValueError(f"direction must be 'forward' or 'inverse'; got {direction!r}.")
    value = tf.convert_to_tensor(value, self.dtype)
    if tf.executing_eagerly():
      # An eager solve would run its loop op by op and re-vectorise the Jacobian on
      # every evaluation; one traced graph per call is far faster.
      return tf.function(self._solve, autograph=False)(value, direction, log_det,
                                                       regularize)
    return self._solve(value, direction, log_det, regularize)

  def _solve(self, value, direction, log_det, regularize):
    if self.validate_args:
      value = tf.debugging.assert_all_finite(value, f"{self.name}: input is not finite.")
    flat, batch_shape = self._as_batch(value)
    dtype = flat.dtype
    # A Python float goes straight to `dtype`: tf.cast would round it through float32.
    end_time = (tf.constant(self._end_time, dtype) if isinstance(self._end_time, float)
                else tf.cast(self._end_time, dtype))
    if self.validate_args:
      with tf.control_dependencies([tf.debugging.assert_positive(
          end_time, f"{self.name}: end_time must be positive.")]):
        end_time = tf.identity(end_time)
    sign = 1.0 if direction == "forward" else -1.0
    probe = self._probe(flat) if self._trace == "hutchinson" and (
        log_det or regularize) else None
    zeros = tf.zeros(tf.shape(flat)[:1], dtype)

    def dynamics(s, state):
      # T rides along as a constant state component so that the adjoint method, which
      # differentiates only the state and the variables fn reads, reaches a learned T.
      end_time = state[-1]
      t = end_time * s if direction == "forward" else end_time * (1.0 - s)
      z = state[0]
      if log_det or regularize:
        f, trace, norm = self._field_and_trace(t, z, probe, regularize)
      else:
        f = self._f(t, z)
      rates = [sign * tf.reshape(end_time, [-1] + [1] * (z.shape.rank - 1)) * f]
      if log_det:
        rates.append(sign * end_time * trace)
      if regularize:
        axes = list(range(1, f.shape.rank))
        rates += [end_time * tf.reduce_sum(tf.square(f), axis=axes), end_time * norm]
      return rates + [tf.zeros_like(end_time)]

    state = [flat] + [zeros] * (int(log_det) + 2 * int(regularize)) + [zeros + end_time]
    # The regularisers only accumulate and T is constant: no error control for them.
    controlled = [True] * (1 + int(log_det)) + [False] * (1 + 2 * int(regularize))
    if self._gradient == "adjoint":
      result = ode.integrate_adjoint(dynamics, state, controlled=controlled,
                                     validate_args=self.validate_args,
                                     **self._solver_kwargs)
    else:
      result = ode.integrate(dynamics, state, controlled=controlled, **self._solver_kwargs)
    final = self._mark_failures(result)
    out = tf.reshape(final[0], tf.shape(value))
    parts = [tf.reshape(part, batch_shape) for part in final[1:-1]]
    ldj = parts.pop(0) if log_det else None
    kinetic, norm = parts if regularize else (None, None)
    return ContinuousFlowResult(out, ldj, kinetic, norm, result.num_evaluations,
                                tf.reshape(result.success, batch_shape))

  def _mark_failures(self, result):
    success = result.success
    if self.validate_args:
      check = tf.debugging.assert_equal(success, True, message=(
          f"{self.name}: the ODE solver did not reach the end time within max_num_steps="
          f"{self._solver_kwargs['max_num_steps']} steps; raise max_num_steps, loosen "
          "rtol/atol, or regularise the vector field (kinetic/Jacobian weights)."))
      with tf.control_dependencies([check]):
        return [tf.identity(part) for part in result.state]
    nan = tf.constant(float("nan"), result.state[0].dtype)
    return [tf.where(tf.reshape(success, [-1] + [1] * (part.shape.rank - 1)), part, nan)
            for part in result.state]

  def _forward(self, z):
    return self.solve(z, "forward", log_det=False).value

  def _inverse(self, x, **kwargs):
    result = self.solve(x, "inverse")
    _log_det_cache.remember_inverse_log_det(self, x, result.log_det, kwargs)
    return result.value

  def _inverse_log_det_jacobian(self, x):
    return self.solve(x, "inverse").log_det

  def _forward_log_det_jacobian(self, z):
    return self.solve(z, "forward").log_det
