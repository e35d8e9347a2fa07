"""ContinuousFlow: closed forms of linear fields, autodiff Jacobians, Hutchinson, XLA."""

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import scipy.stats
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_flows import bijectors as tffb

tfb = tfp.bijectors
tfd = tfp.distributions

A = np.array([[-0.3, 0.8], [-0.5, 0.2]])
Z = np.random.default_rng(0).normal(size=[6, 2])


def _linear_field(dtype):
  matrix = tf.constant(A, dtype)
  return lambda t, z: tf.linalg.matvec(matrix, z)


def _nonlinear_field(dtype):
  rng = np.random.default_rng(3)
  w1 = tf.constant(rng.normal(size=[2, 8]), dtype)
  w2 = tf.constant(rng.normal(size=[8, 2]) * 0.5, dtype)
  return lambda t, z: tf.matmul(tf.tanh(tf.matmul(z, w1) + t[:, None]), w2)


@pytest.mark.parametrize("dtype,tol", [(tf.float64, 1e-9), (tf.float32, 1e-5)])
def test_linear_field_matches_matrix_exponential_and_trace(dtype, tol):
  end_time = 0.7
  bijector = tffb.ContinuousFlow(_linear_field(dtype), end_time=end_time, trace="exact",
                                 rtol=tol * 1e-2, atol=tol * 1e-2, dtype=dtype)
  z = tf.constant(Z, dtype)

  @tf.function
  def run(z):
    x = bijector.forward(z)
    return (x, bijector.forward_log_det_jacobian(z, event_ndims=1),
            bijector.inverse(tf.identity(x)),
            bijector.inverse_log_det_jacobian(tf.identity(x), event_ndims=1))

  x, fldj, z_back, ildj = run(z)
  expm = scipy.linalg.expm(end_time * A)
  np.testing.assert_allclose(x.numpy(), Z @ expm.T, atol=10 * tol)
  np.testing.assert_allclose(fldj.numpy(), end_time * np.trace(A), atol=10 * tol)
  np.testing.assert_allclose(ildj.numpy(), -end_time * np.trace(A), atol=10 * tol)
  np.testing.assert_allclose(z_back.numpy(), Z, atol=10 * tol)


def test_transformed_distribution_is_the_pushed_forward_gaussian():
  end_time = 1.0
  bijector = tffb.ContinuousFlow(_linear_field(tf.float64), end_time=end_time,
                                 rtol=1e-10, atol=1e-10, dtype=tf.float64)
  base = tfd.MultivariateNormalDiag(tf.zeros([2], tf.float64))
  flow = tfd.TransformedDistribution(base, tfb.Chain([tfb.Shift(tf.constant(
      [1.0, -2.0], tf.float64)), bijector]))
  x = Z + np.array([1.0, -2.0])
  log_prob = tf.function(flow.log_prob)(tf.constant(x)).numpy()
  matrix = scipy.linalg.expm(end_time * A)
  expected = scipy.stats.multivariate_normal(mean=[1.0, -2.0],
                                             cov=matrix @ matrix.T).logpdf(x)
  np.testing.assert_allclose(log_prob, expected, rtol=1e-8)


def test_nonlinear_log_det_matches_autodiff_jacobian_and_round_trips():
  bijector = tffb.ContinuousFlow(_nonlinear_field(tf.float64), trace="exact",
                                 gradient="backprop", rtol=1e-10, atol=1e-10,
                                 dtype=tf.float64)

  @tf.function
  def run(z):
    with tf.GradientTape(persistent=True) as tape:
      tape.watch(z)
      result = bijector.solve(z, "forward")
    # Row i of every event's 2 x 2 Jacobian: the vector-Jacobian product with e_i.
    jacobian = tf.stack([tape.gradient(result.value, z, output_gradients=tf.one_hot(
        tf.fill([6], i), 2, dtype=z.dtype)) for i in range(2)], axis=1)
    back = bijector.solve(tf.identity(result.value), "inverse")
    return result.value, result.log_det, jacobian, back.value, back.log_det

  x, fldj, jacobian, z_back, ildj = run(tf.constant(Z))
  assert np.abs(x.numpy() - Z).max() > 0.1
  np.testing.assert_allclose(fldj.numpy(), np.linalg.slogdet(jacobian.numpy())[1],
                             atol=1e-8)
  np.testing.assert_allclose(ildj.numpy(), -fldj.numpy(), atol=1e-9)
  np.testing.assert_allclose(z_back.numpy(), Z, atol=1e-9)


def test_xla_equals_graph():
  bijector = tffb.ContinuousFlow(_nonlinear_field(tf.float32), trace="hutchinson",
                                 seed=tf.constant([1, 2]), rtol=1e-5, atol=1e-5)

  def run(z):
    result = bijector.solve(z, "inverse", regularize=True)
    return result.value, result.log_det, result.kinetic_energy, result.jacobian_norm

  z = tf.constant(Z, tf.float32)
  graph = tf.function(run)(z)
  xla = tf.function(run, jit_compile=True)(z)
  # Value and log-det are error-controlled; the regularisers only ride along, so the
  # last-bit differences of XLA's arithmetic (which move the step sizes) show more.
  for a, b, tol in zip(graph, xla, (1e-5, 1e-5, 1e-3, 1e-3)):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=tol, atol=tol)


def test_hutchinson_is_unbiased_and_seeded():
  rows = 4000
  field = _nonlinear_field(tf.float64)
  z = tf.constant(np.repeat(Z[:1], rows, axis=0))

  def log_det(trace, noise, seed):
    bijector = tffb.ContinuousFlow(field, trace=trace, noise=noise, seed=seed,
                                   rtol=1e-8, atol=1e-8, dtype=tf.float64)
    return tf.function(lambda z: bijector.solve(z, "forward").log_det)(z).numpy()

  exact = log_det("exact", "rademacher", None)[0]
  for noise in ("rademacher", "gaussian"):
    estimates = log_det("hutchinson", noise, tf.constant([4, 5]))
    standard_error = estimates.std() / np.sqrt(rows)
    # Row-wise probes differ: a real spread, centred on the exact trace integral.
    assert standard_error > 1e-4
    assert abs(estimates.mean() - exact) < 4 * standard_error, (
        noise, estimates.mean(), exact, standard_error)
    np.testing.assert_array_equal(log_det("hutchinson", noise, tf.constant([4, 5])),
                                  estimates)
    assert not np.array_equal(log_det("hutchinson", noise, tf.constant([4, 6])),
                              estimates)


def test_regularisers_match_their_integrals():
  end_time = 0.8
  bijector = tffb.ContinuousFlow(_linear_field(tf.float64), end_time=end_time,
                                 trace="exact", rtol=1e-10, atol=1e-10, dtype=tf.float64)
  result = tf.function(lambda z: bijector.solve(z, "forward", regularize=True))(
      tf.constant(Z))

  def kinetic(z0):
    def rhs(t, state):
      z = state[:2]
      return np.concatenate([A @ z, [np.sum((A @ z) ** 2)]])
    return scipy.integrate.solve_ivp(rhs, [0, end_time], np.concatenate([z0, [0.0]]),
                                     rtol=1e-12, atol=1e-12).y[2, -1]

  np.testing.assert_allclose(result.kinetic_energy.numpy(), [kinetic(z) for z in Z],
                             rtol=1e-7)
  np.testing.assert_allclose(result.jacobian_norm.numpy(), end_time * np.sum(A ** 2),
                             rtol=1e-9)


def _linear_jvp(dtype):
  matrix = tf.constant(A, dtype)
  return lambda t, z, tangents: (tf.linalg.matvec(matrix, z),
                                 tf.linalg.matvec(matrix, tangents))


def test_forward_mode_products_give_the_closed_forms():
  end_time = 0.8
  rows = 4000
  z = tf.constant(np.tile(Z, [rows // len(Z) + 1, 1])[:rows])

  def solve(trace):
    bijector = tffb.ContinuousFlow(
        _linear_field(tf.float64), end_time=end_time, trace=trace,
        seed=tf.constant([7, 8]), jvp_fn=_linear_jvp(tf.float64), rtol=1e-10,
        atol=1e-10, dtype=tf.float64)
    return tf.function(lambda z: bijector.solve(z, "forward", regularize=True))(z)

  exact = solve("exact")
  np.testing.assert_allclose(exact.value.numpy(), z.numpy() @ scipy.linalg.expm(
      end_time * A).T, atol=1e-8)
  np.testing.assert_allclose(exact.log_det.numpy(), end_time * np.trace(A), atol=1e-9)
  np.testing.assert_allclose(exact.jacobian_norm.numpy(), end_time * np.sum(A ** 2),
                             rtol=1e-9)
  # Hutchinson from J e: e^T A e has mean tr(A) and |A e|^2 has mean |A|_F^2.
  estimate = solve("hutchinson")
  for values, truth in ((estimate.log_det.numpy(), end_time * np.trace(A)),
                        (estimate.jacobian_norm.numpy(), end_time * np.sum(A ** 2))):
    standard_error = values.std() / np.sqrt(rows)
    assert standard_error > 1e-4
    assert abs(values.mean() - truth) < 4 * standard_error, (values.mean(), truth)


def test_net_forward_mode_matches_reverse_mode_autodiff():
  from tfp_flows import nets  # pylint: disable=import-outside-toplevel
  net = nets.TimeConditionedMLP((16, 16), dtype="float64")
  net.build((None, 3))
  rng = np.random.default_rng(5)
  for weight in net.weights:
    weight.assign(rng.normal(size=weight.shape) * 0.5)
  z = tf.constant(rng.normal(size=[7, 3]))
  field = lambda t, z: net(z, t)
  jvp_fn = lambda t, z, tangents: net.call_with_tangents(z, t, tangents)
  for trace in ("exact", "hutchinson"):
    results = [tffb.ContinuousFlow(field, trace=trace, seed=tf.constant([1, 2]),
                                   jvp_fn=fn, rtol=1e-10, atol=1e-10,
                                   dtype=tf.float64).solve(z, "inverse", regularize=True)
               for fn in (None, jvp_fn)]
    assert np.abs(results[0].value.numpy() - z.numpy()).max() > 0.1
    # Same field, same probe: e^T J e is the same number in either mode; the
    # Hutchinson Frobenius estimates (|J^T e|^2 against |J e|^2) differ, both unbiased.
    parts = ("value", "log_det", "kinetic_energy") + (
        ("jacobian_norm",) if trace == "exact" else ())
    for part in parts:
      np.testing.assert_allclose(getattr(results[1], part).numpy(),
                                 getattr(results[0], part).numpy(), atol=1e-11)


def test_step_cap_raises_with_validate_args_and_gives_nan_rows_without():
  stiff = lambda t, z: -500.0 * z
  z = tf.constant(Z, tf.float32)
  checked = tffb.ContinuousFlow(stiff, trace="exact", max_num_steps=3, validate_args=True)
  with pytest.raises(tf.errors.InvalidArgumentError, match="max_num_steps=3"):
    checked.forward(z)
  unchecked = tffb.ContinuousFlow(stiff, trace="exact", max_num_steps=3)
  result = unchecked.solve(z, "inverse")
  assert np.isnan(result.value.numpy()).all() and np.isnan(result.log_det.numpy()).all()
  assert not result.success.numpy().any()


def test_step_cap_under_xla_with_validate_args_gives_nan_rows():
  # XLA compiles the assertion away: before, validate_args=True then returned the
  # unfinished solve (z part-way to the end time) as if it were the answer.
  stiff = lambda t, z: -500.0 * z
  checked = tffb.ContinuousFlow(stiff, trace="exact", max_num_steps=3, validate_args=True)
  result = tf.function(lambda z: checked.solve(z, "inverse"), jit_compile=True)(
      tf.constant(Z, tf.float32))
  assert np.isnan(result.value.numpy()).all() and np.isnan(result.log_det.numpy()).all()
  assert not result.success.numpy().any()
  sample = tf.function(checked.forward, jit_compile=True)(tf.constant(Z, tf.float32))
  assert np.isnan(sample.numpy()).all()


def test_adjoint_backward_solve_out_of_steps_gives_nan_gradients_or_raises():
  # A field whose backward (augmented) solve needs more steps than its forward one:
  # near the cap the forward solve finishes and the backward one does not. Its
  # gradient must then be NaN (or raise), never a finite gradient of a truncated solve.
  weight = tf.Variable(np.random.default_rng(0).normal(size=[2, 2]) * 3.0)
  x = tf.constant(np.random.default_rng(0).normal(size=[5, 2]))
  field = lambda t, z: tf.tanh(tf.linalg.matvec(weight, z)) * (1 + 3 * tf.sin(8 * t))[:, None]

  def gradient(method, cap, validate_args=False):
    bijector = tffb.ContinuousFlow(field, trace="exact", gradient=method, rtol=1e-6,
                                   atol=1e-6, max_num_steps=cap,
                                   validate_args=validate_args, dtype=tf.float64)

    @tf.function
    def run():
      with tf.GradientTape() as tape:
        result = bijector.solve(x, "inverse")
        loss = tf.reduce_sum(result.value ** 2) - tf.reduce_sum(result.log_det)
      return tf.reduce_all(result.success), tape.gradient(loss, weight)
    return [t.numpy() for t in run()]

  reference = gradient("backprop", 1000)[1]
  outcomes = []
  # The forward solve needs 16 steps and the backward one 18: caps 16 and 17 starve
  # only the backward solve. Each cap is a new trace of the written-out solver.
  for cap in range(16, 20):
    forward_finished, grad = gradient("adjoint", cap)
    if not forward_finished:
      continue
    if np.isnan(grad).all():
      if "nan" not in outcomes:
        with pytest.raises(tf.errors.InvalidArgumentError, match="backward ODE solve"):
          gradient("adjoint", cap, validate_args=True)
      outcomes.append("nan")
    else:
      np.testing.assert_allclose(grad, reference, rtol=1e-4, err_msg=f"cap {cap}")
      outcomes.append("finite")
  assert "nan" in outcomes and "finite" in outcomes, outcomes


def test_end_time_must_be_positive_in_any_form():
  field = _linear_field(tf.float32)
  for end_time in (np.float32(-1.0), tf.constant(-1.0), tf.constant(0.0), -2):
    with pytest.raises(ValueError, match="end_time must be positive"):
      tffb.ContinuousFlow(field, end_time=end_time)
  negative = tf.Variable(-0.5)
  checked = tffb.ContinuousFlow(field, end_time=negative, validate_args=True)
  with pytest.raises(tf.errors.InvalidArgumentError, match="end_time must be positive"):
    checked.forward(tf.constant(Z, tf.float32))
  called = tffb.ContinuousFlow(field, end_time=lambda: tf.constant(-0.5), validate_args=True)
  with pytest.raises(tf.errors.InvalidArgumentError, match="end_time must be positive"):
    called.forward(tf.constant(Z, tf.float32))


def test_an_end_time_callable_is_read_at_every_solve():
  # A learned T held by a bijector kept across updates: the matrix exponential of the
  # T of each call, and the gradient of the log-det, tr(A), with respect to T.
  sqrt_end_time = tf.Variable(np.sqrt(0.7))
  bijector = tffb.ContinuousFlow(_linear_field(tf.float64),
                                 end_time=lambda: tf.square(sqrt_end_time), trace="exact",
                                 rtol=1e-11, atol=1e-11, dtype=tf.float64)
  for end_time in (0.7, 0.3):
    sqrt_end_time.assign(np.sqrt(end_time))
    x = bijector.forward(tf.constant(Z)).numpy()
    np.testing.assert_allclose(x, Z @ scipy.linalg.expm(end_time * A).T, atol=1e-8)
  with tf.GradientTape() as tape:
    fldj = bijector.forward_log_det_jacobian(tf.constant(Z[:1]), event_ndims=1)
  # d(T tr A) / d sqrt(T) = 2 sqrt(T) tr A
  np.testing.assert_allclose(tape.gradient(fldj, sqrt_end_time).numpy(),
                             2 * np.sqrt(0.3) * np.trace(A), rtol=1e-6)


def test_content_keyed_probes_make_a_point_s_log_det_batch_independent():
  field = _nonlinear_field(tf.float64)
  z = tf.constant(Z)

  def log_det(keyed, value):
    bijector = tffb.ContinuousFlow(field, trace="hutchinson", seed=tf.constant([1, 2]),
                                   content_keyed_probes=keyed, rtol=1e-9, atol=1e-9,
                                   dtype=tf.float64)
    return bijector.solve(value, "inverse").log_det.numpy()

  keyed = log_det(True, z)
  reversed_rows = log_det(True, z[::-1])
  np.testing.assert_allclose(reversed_rows[::-1], keyed, rtol=1e-7, atol=1e-9)
  np.testing.assert_allclose(log_det(True, z[3:4]), keyed[3:4], rtol=1e-7, atol=1e-9)
  # By row index instead, the same points get other probes in another order.
  by_index = log_det(False, z)
  assert np.abs(log_det(False, z[::-1])[::-1] - by_index).max() > 1e-3
  with pytest.raises(ValueError, match="Rademacher"):
    tffb.ContinuousFlow(field, trace="hutchinson", seed=[1, 2], noise="gaussian",
                        content_keyed_probes=True)


@pytest.mark.parametrize("gradient", ["adjoint", "backprop"])
def test_learned_end_time_and_field_weights_get_the_same_gradients(gradient):
  sqrt_end_time = tf.Variable(0.9, dtype=tf.float64)
  weight = tf.Variable(A)
  field = lambda t, z: tf.tanh(tf.linalg.matvec(weight, z))

  @tf.function
  def gradients():
    with tf.GradientTape() as tape:
      bijector = tffb.ContinuousFlow(field, end_time=tf.square(sqrt_end_time),
                                     trace="exact", gradient=gradient, rtol=1e-9,
                                     atol=1e-9, dtype=tf.float64)
      result = bijector.solve(tf.constant(Z), "inverse")
      loss = tf.reduce_sum(result.value ** 2) + tf.reduce_sum(result.log_det)
    return tape.gradient(loss, [sqrt_end_time, weight])

  got = gradients()
  # Reference: central differences of the same loss.
  def loss_at(s, w):
    bijector = tffb.ContinuousFlow(lambda t, z: tf.tanh(tf.linalg.matvec(w, z)),
                                   end_time=s * s, trace="exact", rtol=1e-11,
                                   atol=1e-11, dtype=tf.float64)
    result = bijector.solve(tf.constant(Z), "inverse")
    return tf.reduce_sum(result.value ** 2) + tf.reduce_sum(result.log_det)
  loss_at = tf.function(loss_at)
  step = 1e-6
  fd_time = (loss_at(tf.constant(0.9 + step, tf.float64), tf.constant(A)) -
             loss_at(tf.constant(0.9 - step, tf.float64), tf.constant(A))) / (2 * step)
  np.testing.assert_allclose(got[0].numpy(), fd_time.numpy(), rtol=1e-5)
  e = np.zeros_like(A)
  e[1, 0] = step
  fd_weight = (loss_at(tf.constant(0.9, tf.float64), tf.constant(A + e)) -
               loss_at(tf.constant(0.9, tf.float64), tf.constant(A - e))) / (2 * step)
  np.testing.assert_allclose(got[1].numpy()[1, 0], fd_weight.numpy(), rtol=1e-5)


def test_adjoint_statistics_count_every_backward_evaluation_under_xla():
  counter = tf.Variable(0, trainable=False)
  weight = tf.Variable(A)

  def field(t, z):
    with tf.control_dependencies([counter.assign_add(1)]):
      return tf.tanh(tf.linalg.matvec(weight, z)) * (1.0 + 0.3 * t[:, None])

  bijector = tffb.ContinuousFlow(field, trace="exact", rtol=1e-7, atol=1e-7,
                                 dtype=tf.float64)

  @tf.function(jit_compile=True)
  def step(x):
    with tf.GradientTape() as tape:
      result = bijector.solve(x, "inverse")
      loss = tf.reduce_sum(result.value ** 2) + tf.reduce_sum(result.log_det)
    gradient = tape.gradient(loss, weight)
    return (result.num_evaluations, result.backward_statistics["num_evaluations"],
            result.backward_statistics["num_steps"], gradient)

  forward, backward, backward_steps, gradient = step(tf.constant(Z))
  # Every evaluation of the field is one of the two solves'.
  assert counter.numpy() == forward.numpy() + backward.numpy()
  # The backward solve starts from the forward's step: no first-step estimate.
  assert backward.numpy() == 1 + 6 * backward_steps.numpy() and backward_steps.numpy() >= 1
  assert np.isfinite(gradient.numpy()).all()


def test_bad_arguments_are_clear_errors():
  field = _linear_field(tf.float32)
  with pytest.raises(ValueError, match="seed"):
    tffb.ContinuousFlow(field, trace="hutchinson")
  with pytest.raises(ValueError, match="trace"):
    tffb.ContinuousFlow(field, trace="hutch")
  with pytest.raises(ValueError, match="max_num_steps"):
    tffb.ContinuousFlow(field, max_num_steps=None)
  with pytest.raises(ValueError, match="num_steps"):
    tffb.ContinuousFlow(field, solver="rk4")
  with pytest.raises(ValueError, match="end_time"):
    tffb.ContinuousFlow(field, end_time=0.0)
  with pytest.raises(ValueError, match="callable"):
    tffb.ContinuousFlow("not a function")
  with pytest.raises(ValueError, match="jvp_fn"):
    tffb.ContinuousFlow(field, jvp_fn="not a function")
