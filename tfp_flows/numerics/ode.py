"""ODE solvers for continuous flows: row-wise adaptive Dormand-Prince, RK4, Euler, adjoint.

Every solver integrates `dy/ds = fn(s, y)` over `s` in [0, 1] (callers map their own
time interval onto [0, 1]; see `tfp_flows.bijectors.ContinuousFlow`). The state `y` is a
list of tensors whose leading dimension is the batch `B`; `fn(s, y)` gets `s` as a `[B]`
tensor and returns a list of derivatives with the state's shapes.

Why our own solvers rather than `tfp.math.ode`:

* Row-wise step sizes. The adaptive solver keeps a time and a step size per row, so a
  row's result depends only on that row: `log_prob` of a point is the same alone or in
  any batch, and one diverging row cannot shrink the steps (or poison the result) of
  the others. `tfp.math.ode.DormandPrince` shares one step size over the batch.
* One bounded loop: one `tf.while_loop` with `maximum_iterations=max_num_steps`,
  no TensorArrays of solution times. Its body holds the six stages written out (six
  copies of `fn`): the tableau's weights are constants, so a stage's input is one
  fused multiply-add per component. A stage loop over a `[7, ...]` slope buffer
  compiles about 5 s faster (the 2-D FFJORD training step of
  `benchmarks/ffjord_cost.py`: 18 s against 23 s on a loaded machine) but runs 2.5x
  more HLO instructions per solver step; the written-out stages measured about 10%
  more training steps/s there (a noisy shared-machine A/B), which repays the compile
  after roughly 2,000 steps.
* Fixed-step RK4 and Euler, which `tfp.math.ode` lacks.

Never silent: a row that has not reached s = 1 after `max_num_steps` steps is reported
in `ODEResult.success` (and the callers turn it into NaN or an error).
"""

import collections

import tensorflow as tf

from tfp_flows.numerics import checks

__all__ = ["GRADIENTS", "ODEResult", "SOLVERS", "check_solver_args", "integrate",
           "integrate_adjoint"]

SOLVERS = ("dopri5", "rk4", "euler")
# How a solve is differentiated: the adjoint's backward solve or through the steps.
GRADIENTS = ("adjoint", "backprop")

ODEResult = collections.namedtuple(
    "ODEResult", ["state", "num_evaluations", "num_steps", "success", "next_step"])
ODEResult.__doc__ = """Result of `integrate`.

Fields:
  state: list of tensors, the state at s = 1.
  num_evaluations: int32 scalar, evaluations of `fn` on the whole batch.
  num_steps: int32 scalar, solver steps attempted (accepted or rejected).
  success: `[B]` bool, rows that reached s = 1.
  next_step: `[B]`, the step each row's controller proposes after its last accepted
    step, `h * factor` of that step ("dopri5"; the fixed step for "rk4"/"euler"): a
    first step for a solve that continues from here or runs back over the end of this
    one (the adjoint's backward solve).
"""

# Dormand & Prince (1980), RK5(4)7FM: nodes, stages, 5th-order weights and the
# difference between the 5th- and 4th-order weights (the embedded error estimate).
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_A = ((),
      (1 / 5,),
      (3 / 40, 9 / 40),
      (44 / 45, -56 / 15, 32 / 9),
      (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
      (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656))
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
_E = (35 / 384 - 5179 / 57600, 0.0, 500 / 1113 - 7571 / 16695, 125 / 192 - 393 / 640,
      -2187 / 6784 + 92097 / 339200, 11 / 84 - 187 / 2100, -1 / 40)


def check_solver_args(solver, rtol, atol, max_num_steps, num_steps):
  """Raises ValueError for solver arguments `integrate` cannot use, quoting them."""
  if checks.one_of("solver", solver, SOLVERS) == "dopri5":
    if not (rtol > 0 and atol > 0):
      raise ValueError(f"rtol and atol must be positive; got rtol={rtol!r}, atol={atol!r}.")
    checks.int_at_least("max_num_steps", max_num_steps, 1,
                        why=": the adaptive solver never runs an unbounded loop")
    if num_steps is not None:
      raise ValueError(f"num_steps={num_steps!r} is for the fixed-step solvers (rk4, "
                       "euler); dopri5 chooses its own steps within rtol and atol. Drop "
                       "num_steps, or pass solver='rk4' with it.")
  elif not checks.is_int_at_least(num_steps, 1):
    raise ValueError(f"solver={solver!r} takes a fixed positive int num_steps; "
                     f"got {num_steps!r}.")


def _row_shape(h, x):
  return tf.reshape(h, [-1] + [1] * (x.shape.rank - 1))


def _weighted_sum(weights, ks, j):
  """`sum_i weights[i] * ks[i][j]` over the nonzero weights (None if there are none)."""
  total = None
  for w, k in zip(weights, ks):
    if w != 0.0:
      term = tf.constant(w, k[j].dtype) * k[j]
      total = term if total is None else total + term
  return total


def _axpy(y, h, ks, weights, batched):
  """`y + h * sum_i weights[i] * ks[i]` for every state component (zero weights skipped)."""
  out = []
  for j, (y_j, is_batched) in enumerate(zip(y, batched)):
    total = _weighted_sum(weights, ks, j)
    if total is None:
      out.append(y_j)
      continue
    step = _row_shape(h, y_j) if is_batched else h[0]
    out.append(y_j + step * total)
  return out


def _error_terms(h, slopes, batched, controlled):
  """The embedded error `h * sum_i _E[i] slopes[i]` per controlled component (else None)."""
  out = []
  for j, (is_batched, use) in enumerate(zip(batched, controlled)):
    total = _weighted_sum(_E, slopes, j) if use else None
    out.append(None if total is None else
               (_row_shape(h, total) if is_batched else h[0]) * total)
  return out


def _row_sum_squares(x):
  return tf.reduce_sum(tf.reshape(tf.square(x), [tf.shape(x)[0], -1]), axis=1)


def _error_ratio(y, y_new, error, rtol, atol, controlled):
  """Per-row RMS of `error / (atol + rtol max(|y|, |y_new|))` over controlled components."""
  total, count = 0.0, 0
  for y_j, n_j, e_j, use in zip(y, y_new, error, controlled):
    if not use:
      continue
    scale = atol + rtol * tf.maximum(tf.abs(y_j), tf.abs(n_j))
    total += _row_sum_squares(e_j / scale)
    count += max(1, y_j.shape[1:].num_elements())
  return tf.sqrt(total / count)


def _initial_step(fn, s, y, f0, rtol, atol, batched, controlled):
  """Hairer, Norsett & Wanner (1993), II.4: a first step from two evaluations, per row."""
  dtype = y[0].dtype

  def rms(parts):
    total, count = 0.0, 0
    for (x, ref), use in zip(parts, controlled):
      if use:
        total += _row_sum_squares(x / (atol + rtol * tf.abs(ref)))
        count += max(1, x.shape[1:].num_elements())
    return tf.sqrt(total / count)

  d0 = rms(list(zip(y, y)))
  d1 = rms(list(zip(f0, y)))
  small = tf.constant(1e-6, dtype)
  h0 = tf.where((d0 < 1e-5) | (d1 < 1e-5), small, 0.01 * d0 / tf.maximum(d1, 1e-30))
  h0 = tf.minimum(h0, 1.0)
  y1 = [y_j + (_row_shape(h0, y_j) if is_batched else tf.reduce_min(h0)) * f_j
        for y_j, f_j, is_batched in zip(y, f0, batched)]
  f1 = fn(s + h0, y1)
  d2 = rms([((f1_j - f0_j) / _row_shape(h0, f0_j), y_j) if is_batched else (f0_j, y_j)
            for f1_j, f0_j, y_j, is_batched in zip(f1, f0, y, batched)])
  biggest = tf.maximum(d1, d2)
  h1 = tf.where(biggest <= 1e-15, tf.maximum(small, h0 * 1e-3),
                tf.pow(0.01 / tf.maximum(biggest, 1e-30), 1 / 5))
  return tf.stop_gradient(tf.minimum(100.0 * h0, h1))


def _dopri5(fn, y0, rtol, atol, max_num_steps, batched, controlled, shared_steps,
            first_step):
  dtype = y0[0].dtype
  batch = tf.shape(y0[0])[0]
  rtol, atol = tf.constant(rtol, dtype), tf.constant(atol, dtype)
  s0 = tf.zeros([batch], dtype)
  f0 = fn(s0, y0)
  if first_step is None:
    h = _initial_step(fn, s0, y0, f0, rtol, atol, batched, controlled)
  else:
    # A positive finite guess, at most the whole interval (a NaN row's guess, say,
    # becomes the whole interval, and the controller shrinks it if it must).
    h = tf.stop_gradient(tf.broadcast_to(tf.cast(first_step, dtype), [batch]))
    h = tf.where(h > 0.0, tf.minimum(h, 1.0), tf.ones_like(h))
  if shared_steps:
    h = tf.fill([batch], tf.reduce_min(h))

  def cond(step, s, h, h_next, y, k1):
    del step, h, h_next, y, k1
    return tf.reduce_any(s < 1.0)

  def body(step, s, h, h_next, y, k1):
    active = s < 1.0
    last = h >= 1.0 - s
    h_used = tf.where(active, tf.where(last, 1.0 - s, h), tf.zeros_like(h))
    # The six new stages written out: the tableau's weights are Python constants, so
    # each stage input is one fused multiply-add per component (zero weights skipped),
    # with no stage loop, slope buffer or dynamic tableau slice in the compiled step.
    slopes = [k1]
    for c, a in zip(_C[1:], _A[1:]):
      slopes.append(fn(s + c * h_used, _axpy(y, h_used, slopes, a, batched)))
    y_new = _axpy(y, h_used, slopes, _B, batched)
    k7 = fn(s + h_used, y_new)
    slopes.append(k7)
    error = _error_terms(h_used, slopes, batched, controlled)
    ratio = tf.stop_gradient(_error_ratio(y, y_new, error, rtol, atol, controlled))
    if shared_steps:
      ratio = tf.fill([batch], tf.reduce_max(tf.where(active, ratio, tf.zeros_like(ratio))))
    accept = active & (ratio <= 1.0)
    factor = tf.where(ratio > 0.0,
                      tf.clip_by_value(0.9 * tf.pow(tf.maximum(ratio, 1e-30), -0.2), 0.2, 10.0),
                      tf.constant(10.0, dtype))
    factor = tf.where(accept, factor, tf.minimum(factor, 1.0))
    s_new = tf.where(accept, tf.where(last, tf.ones_like(s), s + h_used), s)
    h_new = tf.where(active, h * factor, h)
    h_next = tf.where(accept, h_used * factor, h_next)
    y_out, k_out = [], []
    for y_j, n_j, k1_j, k7_j, is_batched in zip(y, y_new, k1, k7, batched):
      keep = _row_shape(accept, y_j) if is_batched else accept[0]
      y_out.append(tf.where(keep, n_j, y_j))
      k_out.append(tf.where(keep, k7_j, k1_j))
    return step + 1, s_new, h_new, h_next, y_out, k_out

  loop_vars = (tf.constant(0), s0, h, h, list(y0), list(f0))
  # A batch of unknown size broadcast against a known batch of 1 has an unknown size (1
  # could broadcast), where a known 2 stays 2: the loop lets the batch axis vary.
  invariants = tf.nest.map_structure(
      lambda t: tf.TensorShape([None] + t.shape[1:]) if t.shape.rank else t.shape,
      loop_vars)
  steps, s, _, h_next, y, _ = tf.while_loop(
      cond, body, loop_vars, shape_invariants=invariants,
      maximum_iterations=int(max_num_steps))
  start_evaluations = 1 if first_step is None else 0
  return ODEResult(y, 1 + start_evaluations + 6 * steps, steps, s >= 1.0, h_next)


_FIXED_STAGES = {
    "euler": ((0.0,), ((),), (1.0,)),
    "rk4": ((0.0, 0.5, 0.5, 1.0), ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
            (1 / 6, 1 / 3, 1 / 3, 1 / 6)),
}


def _fixed_step(fn, y0, solver, num_steps, batched):
  nodes, stages, weights = _FIXED_STAGES[solver]
  dtype = y0[0].dtype
  batch = tf.shape(y0[0])[0]
  h = tf.fill([batch], tf.constant(1.0 / num_steps, dtype))

  def body(step, y):
    s = tf.cast(step, dtype) * h
    ks = []
    for c, a in zip(nodes, stages):
      ks.append(fn(s + c * h, _axpy(y, h, ks, a, batched)))
    return step + 1, _axpy(y, h, ks, weights, batched)

  steps, y = tf.while_loop(lambda step, y: step < num_steps, body,
                           (tf.constant(0), list(y0)), maximum_iterations=int(num_steps))
  return ODEResult(y, steps * len(nodes), steps, tf.ones([batch], tf.bool), h)


def integrate(fn, state, solver="dopri5", rtol=1e-5, atol=1e-5, max_num_steps=1000,
              num_steps=None, batched=None, controlled=None, shared_steps=False,
              first_step=None):
  """Integrates `dy/ds = fn(s, y)` from s = 0 to s = 1.

  "dopri5": Dormand-Prince 5(4) with the first-same-as-last trick (6 evaluations per
  step, one more for the slope at s = 0 and one for the first step size unless
  `first_step` is given), error per row `RMS(err / (atol + rtol
  max(|y|, |y_new|)))` over the `controlled` components, accepted when <= 1, next step
  `h * clip(0.9 ratio^(-1/5), 0.2, 10)`. Each row has its own time and step size unless
  `shared_steps` (then all rows step together, controlled by the worst row, which
  unbatched components such as parameter adjoints need).
  "rk4" / "euler": `num_steps` equal steps, 4 / 1 evaluations each.

  Gradients flow through the steps (backpropagation through the solver; memory grows
  with the steps taken, and under XLA with `max_num_steps`). Step sizes are constants
  to the gradient. For constant memory use `integrate_adjoint`.

  Args:
    fn: `fn(s, y) -> dy/ds`, `s` a `[B]` tensor, `y` and the result lists of tensors.
    state: list of tensors at s = 0.
    solver: "dopri5", "rk4" or "euler".
    rtol, atol: tolerances of "dopri5".
    max_num_steps: cap on the attempted steps of "dopri5" (finite, mandatory).
    num_steps: steps of the fixed-step solvers.
    batched: per component, whether its leading dimension is the batch (default all).
    controlled: per component, whether it enters the error control (default: the
      batched ones).
    shared_steps: one step size for all rows.
    first_step: "dopri5"'s first step, a `[B]` tensor or a scalar (with
      `shared_steps`, the smallest over the rows), e.g. an `ODEResult.next_step`;
      entries that are not positive become 1 (the controller shrinks them as it must).
      Default: Hairer, Norsett & Wanner's estimate, which costs an evaluation.

  Returns:
    `ODEResult`.
  """
  check_solver_args(solver, rtol, atol, max_num_steps, num_steps)
  state = [tf.convert_to_tensor(y) for y in state]
  batched = [True] * len(state) if batched is None else list(batched)
  controlled = list(batched) if controlled is None else list(controlled)
  if not all(batched) and not shared_steps and solver == "dopri5":
    raise ValueError("Unbatched state components need shared_steps=True.")
  if solver == "dopri5":
    return _dopri5(fn, state, rtol, atol, max_num_steps, batched, controlled, shared_steps,
                   first_step)
  return _fixed_step(fn, state, solver, int(num_steps), batched)


def integrate_adjoint(fn, state, controlled=None, validate_args=False,
                      backward_statistics=None, **solver_kwargs):
  """`integrate` with gradients by the adjoint method (Chen et al. 2018; Pontryagin).

  The forward solve is not recorded. Its gradient solves, from s = 1 back to 0 with
  shared step sizes, the augmented system

  ```none
  dy/ds = fn(s, y),   da/ds = -a^T dfn/dy,   da_theta/ds = -a^T dfn/dtheta
  ```

  from `a(1) = dL/dy(1)`, `a_theta(1) = 0`, reconstructing `y` backwards. Memory does not
  grow with the number of steps; the cost is a second solve with a vector-Jacobian
  product per evaluation, and the gradient carries the solver's error (it is the exact
  gradient of the continuous problem, not of the discretisation). Error control of the
  backward solve covers `y` and `a` (the "seminorm" of Kidger et al. 2021), not
  `a_theta`, which only accumulates. The backward solve shares `max_num_steps`; if it
  does not reach s = 0 within them, every gradient it returns is NaN (the batch shares
  its steps), and with `validate_args` the gradient computation also raises.

  With "dopri5" the backward solve starts from the step the forward solve's controller
  proposes at s = 1 (the smallest over the rows, `ODEResult.next_step`): the backward
  solve starts where the forward one ended, over the same trajectory, so this is a
  step of the right size, and it saves the evaluation (and the small, cautious first
  step) of the generic first-step estimate. The controller still checks every step.

  Args:
    fn: as for `integrate`; the variables it reads (those a tape sees in the forward
      solve, `tf.custom_gradient`'s convention) receive gradients.
    state: list of tensors at s = 0 (all batched).
    controlled: per component, whether it (and its adjoint) enters the error control.
    validate_args: also raise `InvalidArgumentError` when the backward solve does not
      finish (eagerly and in graphs; under XLA, which drops assertions, the NaN
      gradients are the signal). See `checks.nan_unless`.
    backward_statistics: optional dict; when the gradient is built, its
      "num_evaluations" and "num_steps" become those of the backward solve (int32
      scalars of the graph that takes the gradient; read them after the gradient).
    **solver_kwargs: `solver`, `rtol`, `atol`, `max_num_steps`, `num_steps`.

  Returns:
    `ODEResult`; gradients flow to `state` and to the variables.
  """
  state = [tf.convert_to_tensor(y) for y in state]
  n = len(state)
  controlled = [True] * n if controlled is None else list(controlled)
  stats = {}

  @tf.custom_gradient
  def solve(*y0):
    result = integrate(fn, list(y0), controlled=controlled, **solver_kwargs)
    stats["result"] = result

    def grad(*upstream, variables=None):
      params = list(variables or [])
      y1 = [tf.stop_gradient(y) for y in result.state]
      adjoint = [tf.zeros_like(y) if u is None else u for y, u in zip(y1, upstream)]

      def augmented(s_back, aug):
        s = 1.0 - s_back
        y, a = aug[:n], aug[n:2 * n]
        with tf.GradientTape() as tape:
          tape.watch(y)
          f = fn(s, y)
        vjp = tape.gradient(f, y + params, output_gradients=a,
                            unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return [-f_j for f_j in f] + vjp[:n] + [tf.convert_to_tensor(v) for v in vjp[n:]]

      aug0 = y1 + adjoint + [tf.zeros_like(p) for p in params]
      first_step = (result.next_step if solver_kwargs.get("solver", "dopri5") == "dopri5"
                    else None)
      back = integrate(augmented, aug0, batched=[True] * (2 * n) + [False] * len(params),
                       controlled=controlled * 2 + [False] * len(params),
                       shared_steps=True, first_step=first_step, **solver_kwargs)
      if backward_statistics is not None:
        backward_statistics.update(num_evaluations=back.num_evaluations,
                                   num_steps=back.num_steps)
      # An unfinished backward solve stopped short of s = 0: its adjoint is the
      # gradient of another problem, so it must not reach the optimizer as a number.
      gradients = checks.nan_unless(
          tf.reduce_all(back.success), back.state[n:], validate_args, message=(
              "the adjoint's backward ODE solve did not reach s = 0 within max_num_steps="
              f"{solver_kwargs.get('max_num_steps')} steps; raise max_num_steps or loosen "
              "rtol/atol"))
      return gradients[:n], gradients[n:]

    return result.state, grad

  final = solve(*state)
  result = stats["result"]
  return result._replace(state=list(final))
