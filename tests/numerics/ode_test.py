"""ODE solvers: closed forms, convergence order, row independence, step cap, adjoint."""

import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf

from tfp_flows.numerics import ode

A = np.array([[-0.3, 0.8], [-0.5, 0.2]])
Y0 = np.random.default_rng(0).normal(size=[5, 2])


def _linear(matrix):
  return lambda s, y: [tf.linalg.matvec(matrix, y[0])]


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-9), (np.float32, 1e-5)])
def test_dopri5_solves_a_linear_system_to_its_tolerance(dtype, tol):
  solve = tf.function(lambda y: ode.integrate(_linear(tf.constant(A, dtype)), [y],
                                              rtol=tol * 1e-2, atol=tol * 1e-2))
  result = solve(tf.constant(Y0, dtype))
  expected = Y0 @ scipy.linalg.expm(A).T
  np.testing.assert_allclose(result.state[0].numpy(), expected, atol=tol, rtol=0)
  assert result.success.numpy().all()
  # 2 evaluations pick the first step, then 6 per attempted step (first same as last).
  assert result.num_evaluations.numpy() == 2 + 6 * result.num_steps.numpy()


@pytest.mark.parametrize("solver,order,evaluations", [("euler", 1, 1), ("rk4", 4, 4)])
def test_fixed_step_solvers_converge_at_their_order(solver, order, evaluations):
  expected = Y0 @ scipy.linalg.expm(A).T
  errors = []
  for num_steps in (8, 16):
    result = ode.integrate(_linear(tf.constant(A)), [tf.constant(Y0)], solver=solver,
                           num_steps=num_steps)
    errors.append(np.abs(result.state[0].numpy() - expected).max())
    assert result.num_evaluations.numpy() == evaluations * num_steps
  observed_order = np.log2(errors[0] / errors[1])
  assert abs(observed_order - order) < 0.3, observed_order


def test_time_dependent_field_matches_its_closed_form():
  # dy/ds = cos(2 s) y  =>  y(1) = y(0) exp(sin(2) / 2).
  fn = lambda s, y: [tf.cos(2.0 * s)[:, None] * y[0]]
  result = ode.integrate(fn, [tf.constant(Y0)], rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(result.state[0].numpy(), Y0 * np.exp(np.sin(2.0) / 2),
                             rtol=1e-8)


def test_rows_take_their_own_steps_and_a_bad_row_stays_local():
  # Row-dependent stiffness: row 0 decays fast, the others slowly; row 2 is NaN.
  rates = tf.constant([-30.0, -0.5, -0.5, -1.0], tf.float64)
  fn = lambda s, y: [rates[:, None] * y[0]]
  y0 = np.array([[1.0], [2.0], [np.nan], [3.0]])
  solve = tf.function(lambda y, fn: ode.integrate(fn, [y], rtol=1e-8, atol=1e-8,
                                                  max_num_steps=200))
  result = solve(tf.constant(y0), fn)
  good = [0, 1, 3]
  np.testing.assert_allclose(result.state[0].numpy()[good, 0],
                             y0[good, 0] * np.exp(rates.numpy()[good]), rtol=1e-6,
                             atol=1e-7)
  np.testing.assert_array_equal(result.success.numpy(), [True, True, False, True])
  # Each good row alone gives its value in the batch (up to the last bits of vectorised
  # math), and the NaN row did not stop the others: no step size is shared.
  for i in good:
    rates_i = rates[i:i + 1]
    alone = solve(tf.constant(y0[i:i + 1]), lambda s, y, r=rates_i: [r[:, None] * y[0]])
    np.testing.assert_allclose(alone.state[0].numpy()[0], result.state[0].numpy()[i],
                               rtol=1e-10, atol=1e-15)


def test_step_cap_is_reported_not_silent():
  fn = lambda s, y: [-200.0 * y[0]]
  result = ode.integrate(fn, [tf.constant(Y0)], rtol=1e-9, atol=1e-9, max_num_steps=5)
  assert result.num_steps.numpy() == 5
  assert not result.success.numpy().any()


def test_bad_arguments_are_clear_errors():
  fn = _linear(tf.constant(A))
  with pytest.raises(ValueError, match="max_num_steps"):
    ode.integrate(fn, [tf.constant(Y0)], max_num_steps=None)
  with pytest.raises(ValueError, match="solver"):
    ode.integrate(fn, [tf.constant(Y0)], solver="rk45")
  with pytest.raises(ValueError, match="num_steps"):
    ode.integrate(fn, [tf.constant(Y0)], solver="rk4")
  with pytest.raises(ValueError, match="rtol"):
    ode.integrate(fn, [tf.constant(Y0)], rtol=0.0)
  for cap in (2.5, float("inf"), True, 0):
    with pytest.raises(ValueError, match="max_num_steps must be a positive int"):
      ode.integrate(fn, [tf.constant(Y0)], max_num_steps=cap)
  with pytest.raises(ValueError, match="positive int num_steps"):
    ode.integrate(fn, [tf.constant(Y0)], solver="euler", num_steps=4.0)


def _loss_and_gradient_fn(integrator, matrix, jit):
  weights = tf.constant(np.random.default_rng(1).normal(size=[5, 2]))

  def loss_and_gradient(y0):
    with tf.GradientTape() as tape:
      tape.watch(y0)
      fn = lambda s, y: [tf.linalg.matvec(matrix, y[0]) * (1.0 + 0.5 * tf.sin(s))[:, None],
                         tf.reduce_sum(tf.tanh(y[0]), axis=1)]
      result = integrator(fn, [y0, tf.zeros([5], tf.float64)], rtol=1e-9, atol=1e-9)
      loss = tf.reduce_sum(result.state[0] * weights) + tf.reduce_sum(result.state[1])
    return loss, tape.gradient(loss, [y0, matrix])

  return tf.function(loss_and_gradient, jit_compile=jit)


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
def test_adjoint_gradient_equals_backprop_and_finite_differences(jit):
  matrix = tf.Variable(A)
  y0 = tf.constant(Y0)
  loss_a, (dy_a, da_a) = _loss_and_gradient_fn(ode.integrate_adjoint, matrix, jit)(y0)
  backprop = _loss_and_gradient_fn(ode.integrate, matrix, jit)
  loss_b, (dy_b, da_b) = backprop(y0)
  np.testing.assert_allclose(loss_a.numpy(), loss_b.numpy(), rtol=1e-12)
  np.testing.assert_allclose(da_a.numpy(), da_b.numpy(), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(dy_a.numpy(), dy_b.numpy(), rtol=1e-6, atol=1e-7)
  # Central differences of the loss in A[0, 1] (the traced function reads the variable).
  step = 1e-5
  shifted = []
  for sign in (1.0, -1.0):
    matrix.assign(A + sign * step * np.array([[0.0, 1.0], [0.0, 0.0]]))
    shifted.append(backprop(y0)[0].numpy())
  np.testing.assert_allclose(da_b.numpy()[0, 1], (shifted[0] - shifted[1]) / (2 * step),
                             rtol=1e-5)


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
def test_a_given_first_step_skips_the_estimate_and_keeps_rows_independent(jit):
  # dy/ds = A y, per-row first steps (one of them not positive, one NaN: both become 1).
  first = tf.constant([0.3, 0.05, 0.0, np.nan, 1.5], tf.float64)
  solve = tf.function(lambda y, h: ode.integrate(_linear(tf.constant(A)), [y], rtol=1e-9,
                                                 atol=1e-9, first_step=h), jit_compile=jit)
  result = solve(tf.constant(Y0), first)
  np.testing.assert_allclose(result.state[0].numpy(), Y0 @ scipy.linalg.expm(A).T,
                             atol=1e-8, rtol=0)
  assert result.success.numpy().all()
  # 1 evaluation for the slope at s = 0 and 6 per attempted step, none for a first step.
  assert result.num_evaluations.numpy() == 1 + 6 * result.num_steps.numpy()
  # The proposed next steps are those of a controller that met the tolerance: positive
  # and below the whole interval at this tolerance.
  assert (result.next_step.numpy() > 0).all() and (result.next_step.numpy() < 1).all()
  # Row 1 alone, with its own first step, gives its value in the batch.
  alone = solve(tf.constant(Y0[1:2]), first[1:2])
  np.testing.assert_allclose(alone.state[0].numpy()[0], result.state[0].numpy()[1],
                             rtol=1e-12, atol=1e-15)


def _mlp_field(weights):
  w1, w2 = weights
  return lambda s, y: [tf.matmul(tf.tanh(tf.matmul(y[0], w1) + s[:, None]), w2)]


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
def test_adjoint_backward_solve_starts_from_the_forward_step_and_meets_the_tolerance(jit):
  # A nonlinear field with weights; loss weights make every row count.
  rng = np.random.default_rng(4)
  weights = [tf.Variable(rng.normal(size=[2, 16])), tf.Variable(rng.normal(size=[16, 2]) * 0.5)]
  y0 = tf.constant(Y0)
  loss_weights = tf.constant(rng.normal(size=[5, 2]))

  def loss_and_gradients(integrator, tol, **kwargs):
    def run(y0):
      with tf.GradientTape() as tape:
        tape.watch(y0)
        result = integrator(_mlp_field(weights), [y0], rtol=tol, atol=tol, **kwargs)
        loss = tf.reduce_sum(result.state[0] * loss_weights)
      gradients = tape.gradient(loss, [y0] + weights)
      # The backward solve's statistics exist once the gradient is built.
      return loss, gradients, dict(kwargs.get("backward_statistics", {}))
    return tf.function(run, jit_compile=jit)(y0)

  loss, grads, statistics = loss_and_gradients(ode.integrate_adjoint, 1e-6,
                                               backward_statistics={})
  # Reference: backpropagation through a float64 solve at 1e-12. At tolerance 1e-6 the
  # global errors were 4e-6 (loss) and at most 7e-6 of the largest entry (gradients),
  # the same as with the generic first-step estimate; the bounds leave 3-5x.
  ref_loss, ref_grads, _ = loss_and_gradients(ode.integrate, 1e-12)
  np.testing.assert_allclose(loss.numpy(), ref_loss.numpy(), rtol=2e-5)
  for got, want in zip(grads, ref_grads):
    scale = np.abs(want.numpy()).max()
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=2e-5 * scale)
  # The backward solve took no first-step estimate: 1 + 6 evaluations per step.
  backward = statistics["num_evaluations"].numpy()
  assert backward == 1 + 6 * statistics["num_steps"].numpy(), backward
