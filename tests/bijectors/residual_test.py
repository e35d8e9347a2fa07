"""tfp_flows.bijectors.ResidualBlock with a residual g whose Jacobian is known in closed form.

g(y) = c tanh(y W^T + b) with c = 0.7 and ||W||_2 scaled so that Lip(g) = c ||W||_2 is
the value in `LIPSCHITZ`. Its Jacobian is J(y) = c diag(1 - tanh^2(y W^T + b)) W, so
log|det(I + J(y))| from numpy's slogdet of that closed form is the reference for the
residual map z = y + g(y) (TFP's inverse, data -> base). Checks: the "exact" log-det
against it, the fixed-point forward against the residual map, unbiasedness of the
Russian-roulette log-det through the bijector, non-convergence and argument errors.
"""

import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.testing import bijector_checks
from tfp_flows import bijectors as tffb

SCALE = 0.7
LIPSCHITZ = {2: 0.5, 4: 0.7, 8: 0.9}
# The geometric roulette (p = 1/2) has finite variance when Lip(g)^2 < 1/2 (see
# tfp_flows.numerics.log_det_series): Lip(g) <= 0.7 keeps the standard errors meaningful.
ROULETTE_LIPSCHITZ = {2: 0.5, 4: 0.6, 8: 0.7}
NUM_SEEDS = 10_000


def _problem(dim, lipschitz, rows=3, seed=0):
  """(W, b, y) in float64 numpy with c ||W||_2 = lipschitz."""
  rng = np.random.default_rng(seed + dim)
  w = rng.normal(size=[dim, dim])
  w *= lipschitz / (SCALE * np.linalg.norm(w, 2))
  return w, 0.5 * rng.normal(size=[dim]), rng.normal(size=[rows, dim])


def _g(w, b):
  def g(y):
    return SCALE * tf.tanh(tf.linalg.matmul(y, tf.cast(w, y.dtype), transpose_b=True)
                           + tf.cast(b, y.dtype))
  return g


def _closed_form(w, b, y):
  """(y + g(y), log|det(I + J_g(y))|) per row, in numpy."""
  t = np.tanh(y @ w.T + b)
  jacobian = SCALE * (1.0 - t**2)[..., :, None] * w
  sign, log_det = np.linalg.slogdet(np.eye(w.shape[0]) + jacobian)
  assert np.all(sign > 0)
  return y + SCALE * t, log_det


@pytest.mark.parametrize("dim", [2, 4, 8])
def test_exact_log_det_and_fixed_point_inverse(dim):
  w, b, y = _problem(dim, LIPSCHITZ[dim], rows=6)
  y = y.reshape([2, 3, dim])  # two batch dimensions, flattened inside the bijector
  bijector = tffb.ResidualBlock(_g(w, b), tolerance=1e-13, max_iterations=1000,
                                dtype=tf.float64)
  z_expected, log_det_expected = _closed_form(w, b, y)
  assert np.abs(log_det_expected).min() > 1e-2  # a non-trivial log-det

  # Data -> base is the residual map itself; its log-det is the closed form's to 1e-10.
  z = bijector.inverse(tf.constant(y))
  ildj = bijector.inverse_log_det_jacobian(tf.constant(y), event_ndims=1)
  np.testing.assert_allclose(z.numpy(), z_expected, rtol=0, atol=1e-14)
  np.testing.assert_allclose(ildj.numpy(), log_det_expected, rtol=0, atol=1e-10)

  # Base -> data solves the fixed point: forward(z) recovers y, inverse(forward(x)) == x,
  # and fldj(x) == -ildj(forward(x)) == -(closed form at forward(x)).
  y_back = bijector.forward(bijector_checks.fresh(z)).numpy()
  np.testing.assert_allclose(y_back, y, rtol=0, atol=1e-10)
  x = tf.constant(y)  # any point serves as a base-side input
  forward_x = bijector.forward(x).numpy()
  round_trip = bijector.inverse(bijector_checks.fresh(forward_x)).numpy()
  np.testing.assert_allclose(round_trip, y, rtol=0, atol=1e-10)
  fldj = bijector.forward_log_det_jacobian(x, event_ndims=1).numpy()
  ildj_at_forward = bijector.inverse_log_det_jacobian(
      bijector_checks.fresh(forward_x), event_ndims=1).numpy()
  np.testing.assert_allclose(fldj, -ildj_at_forward, rtol=0, atol=1e-12)
  np.testing.assert_allclose(fldj, -_closed_form(w, b, forward_x)[1], rtol=0, atol=1e-10)


def test_make_residual_fn_reads_the_weights_of_each_call():
  # A bijector kept across weight updates (a held distribution): g is made anew at
  # every evaluation, so values follow the variables and gradients reach them.
  w, b, y = _problem(4, LIPSCHITZ[4], rows=5)
  weights = tf.Variable(w)
  made = []

  def make_g():
    made.append(1)
    return _g(tf.convert_to_tensor(weights), b)

  bijector = tffb.ResidualBlock(make_residual_fn=make_g, tolerance=1e-13,
                                max_iterations=1000, dtype=tf.float64)
  for scale in (1.0, 0.5):
    weights.assign(scale * w)
    z_expected, log_det_expected = _closed_form(scale * w, b, y)
    x = bijector_checks.fresh(y)
    np.testing.assert_allclose(bijector.inverse(x).numpy(), z_expected, atol=1e-14)
    np.testing.assert_allclose(bijector.inverse_log_det_jacobian(x, event_ndims=1).numpy(),
                               log_det_expected, atol=1e-10)
    np.testing.assert_allclose(bijector.forward(bijector_checks.fresh(z_expected)).numpy(),
                               y, atol=1e-10)
  # One g per evaluation, however many times the fixed-point solve calls it.
  made.clear()
  bijector.forward(bijector_checks.fresh(z_expected))
  assert len(made) == 1
  with tf.GradientTape() as tape:
    log_det = bijector.inverse_log_det_jacobian(bijector_checks.fresh(y), event_ndims=1)
  gradient = tape.gradient(log_det, weights)
  assert gradient is not None and np.abs(gradient.numpy()).max() > 1e-3


def test_bijector_checks_vector_float64():
  """The shared checks (autodiff Jacobian of the fixed-point forward, gradients) at D = 4.

  Only once: `batch_jacobian` through the eager fixed-point loop costs seconds.
  """
  w, b, y = _problem(4, LIPSCHITZ[4], rows=6)
  bijector = tffb.ResidualBlock(_g(w, b), tolerance=1e-13, max_iterations=1000,
                                dtype=tf.float64)
  out = bijector_checks.assert_bijective_and_log_det(bijector, tf.constant(y.reshape(
      [2, 3, 4])), 1)
  np.testing.assert_allclose(out["ildj"], _closed_form(w, b, out["y"])[1], rtol=0,
                             atol=1e-10)


def test_image_events_float64_and_float32():
  dim = 8
  w, b, y = _problem(dim, 0.9, rows=4)
  g_vector = _g(w, b)
  image_g = lambda v: tf.reshape(g_vector(tf.reshape(v, [-1, dim])), tf.shape(v))
  images = y.reshape([4, 2, 2, 2])
  _, log_det = _closed_form(w, b, y)
  image64 = tffb.ResidualBlock(image_g, event_ndims=3, tolerance=1e-13,
                               max_iterations=1000, dtype=tf.float64)
  np.testing.assert_allclose(
      image64.inverse_log_det_jacobian(tf.constant(images), event_ndims=3).numpy(),
      log_det, rtol=0, atol=1e-10)
  np.testing.assert_allclose(
      image64.forward(image64.inverse(tf.constant(images))).numpy(), images, rtol=0,
      atol=1e-10)
  # float32 with the default tolerance 1e-6: the shared checks at 1e-5 / 1e-4.
  image32 = tffb.ResidualBlock(image_g, event_ndims=3, dtype=tf.float32)
  out = bijector_checks.assert_bijective_and_log_det(image32,
                                                     tf.constant(images, tf.float32), 3)
  np.testing.assert_allclose(out["ildj"], _closed_form(w, b, out["y"].reshape([4, dim]))[1],
                             rtol=0, atol=1e-4)


@pytest.mark.parametrize("dim", [2, 4, 8])
def test_russian_roulette_through_the_bijector_is_unbiased(dim):
  """The mean of 10,000 roulette ildj's (one seed each) is within 4 SE of the exact value.

  The count N is shared by the rows of one call, so each seed is one call (on the 3
  rows): `tf.map_fn` over the seeds inside one `tf.function`. The rows of a call share
  N, not their probes, so per row the 10,000 estimates are i.i.d.
  """
  w, b, y = _problem(dim, ROULETTE_LIPSCHITZ[dim])
  _, exact = _closed_form(w, b, y)
  y = tf.constant(y)

  def one(seed):
    bijector = tffb.ResidualBlock(_g(w, b), log_det="russian_roulette", seed=seed,
                                  dtype=tf.float64)
    return bijector.inverse_log_det_jacobian(y, event_ndims=1)

  seeds = tf.random.experimental.stateless_split(tf.constant([dim, 11], tf.int64),
                                                 NUM_SEEDS)
  run = tf.function(lambda s: tf.map_fn(one, s, fn_output_signature=tf.float64,
                                        parallel_iterations=64))
  samples = run(seeds).numpy()
  se = samples.std(axis=0, ddof=1) / np.sqrt(NUM_SEEDS)
  z = (samples.mean(axis=0) - exact) / se
  print(f"D={dim} Lip={ROULETTE_LIPSCHITZ[dim]}: exact {exact}, mean {samples.mean(0)}, "
        f"SE {se}, z {z}")
  assert len(np.unique(samples[:, 0])) > 10  # the seeds draw different probes and counts
  assert np.all(se > 0) and np.abs(z).max() < 4.0


def test_stochastic_log_det_is_a_function_of_the_seed():
  w, b, y = _problem(4, 0.7)
  y = tf.constant(y)

  def estimate(seed, gradient="neumann", method="russian_roulette"):
    bijector = tffb.ResidualBlock(_g(w, b), log_det=method, gradient=gradient,
                                  seed=tf.constant(seed), dtype=tf.float64)
    return bijector.inverse_log_det_jacobian(y, event_ndims=1).numpy()

  for method in ("series", "russian_roulette"):
    first = estimate([1, 2], method=method)
    np.testing.assert_array_equal(estimate([1, 2], method=method), first)
    np.testing.assert_array_equal(estimate([1, 2], "backprop", method), first)
    assert np.abs(estimate([3, 4], method=method) - first).max() > 1e-3
  # fldj reuses the same estimator on forward(x): exactly minus the ildj there.
  bijector = tffb.ResidualBlock(_g(w, b), log_det="russian_roulette",
                                seed=tf.constant([5, 6]), tolerance=1e-13,
                                max_iterations=1000, dtype=tf.float64)
  x = bijector.forward(y)
  np.testing.assert_allclose(
      bijector.forward_log_det_jacobian(y, event_ndims=1).numpy(),
      -bijector.inverse_log_det_jacobian(bijector_checks.fresh(x), event_ndims=1).numpy(),
      rtol=0, atol=1e-12)


def _non_convergence_problem():
  """Lip(g) = 0.99 and g(0) = 0: rows 0 (z = 0, solved at once) and 1 (|z| ~ 1e-9, its
  steps are below the 1e-6 tolerance) converge within 2 iterations, rows 2 and 3 (|z| ~ 1)
  do not."""
  w, _, y = _problem(4, 0.99, rows=4)
  z = np.concatenate([np.zeros([1, 4]), 1e-9 * y[:1], y[2:]], axis=0)
  return _g(w, np.zeros(4)), z


def test_non_convergence_raises_with_validate_args():
  g, z = _non_convergence_problem()
  bijector = tffb.ResidualBlock(g, max_iterations=2, validate_args=True, dtype=tf.float64)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="fixed-point inverse did not reach tolerance 1e-06 within 2 "
                           "iterations"):
    bijector.forward(tf.constant(z))
  converged = bijector.forward(tf.constant(z[:2])).numpy()  # the converging rows pass
  assert np.all(np.isfinite(converged))


def test_non_convergence_under_xla_with_validate_args_gives_nan_rows():
  # XLA compiles the assertion away: before, validate_args=True then returned the
  # unconverged iterates of rows 2 and 3 as if they were answers.
  g, z = _non_convergence_problem()
  bijector = tffb.ResidualBlock(g, max_iterations=2, validate_args=True, dtype=tf.float64)
  result = tf.function(bijector.forward, jit_compile=True)(tf.constant(z)).numpy()
  assert np.isnan(result[2:]).all()
  expected = tffb.ResidualBlock(g, max_iterations=2, dtype=tf.float64).forward(
      tf.constant(z)).numpy()
  assert np.isfinite(expected[:2]).all()
  np.testing.assert_allclose(result[:2], expected[:2], rtol=0, atol=1e-15)


def test_non_convergence_gives_nan_rows_only_without_validate_args():
  g, z = _non_convergence_problem()
  y, converged, num_iterations = tffb.fixed_point_solve(g, tf.constant(z), 1e-6, 2)
  np.testing.assert_array_equal(converged.numpy(), [True, True, False, False])
  assert int(num_iterations) == 2
  bijector = tffb.ResidualBlock(g, max_iterations=2, dtype=tf.float64)
  result = bijector.forward(tf.constant(z)).numpy()
  assert np.all(np.isnan(result[2:]))
  assert np.all(np.isfinite(result[:2]))
  # The converged rows are correct: they agree with a fully converged solve, and the
  # residual map takes them back to z. After k steps the error is at most
  # L^k |g(y*)| <= 1e-9 here (row 0 is exact).
  reference = tffb.ResidualBlock(g, tolerance=1e-13, max_iterations=10_000,
                                 dtype=tf.float64).forward(tf.constant(z)).numpy()
  assert np.all(np.isfinite(reference))
  np.testing.assert_array_equal(result[0], 0.0)
  np.testing.assert_allclose(result[:2], reference[:2], rtol=0, atol=2e-9)
  np.testing.assert_allclose(result[:2] + g(tf.constant(result[:2])).numpy(), z[:2],
                             rtol=0, atol=4e-9)
  np.testing.assert_allclose(reference + g(tf.constant(reference)).numpy(), z, rtol=0,
                             atol=1e-11)


def test_float32_inverse_converges_far_from_the_origin():
  # Far from the origin float32 round-off alone moves the iterate by an ulp of z
  # (7.6e-6 at |z| ~ 100) each step, above an absolute tolerance of 1e-6; the tolerance
  # is relative to max(1, |z|) so these rows converge instead of coming back NaN.
  w, b, _ = _problem(4, 0.8)
  g = _g(w, b)
  z = np.random.default_rng(1).normal(size=[200, 4]) * np.array([[1.0], [10.0]]).repeat(
      100, axis=0) * 10.0
  bijector = tffb.ResidualBlock(g, tolerance=1e-6, max_iterations=200, dtype=tf.float32)
  y = bijector.forward(tf.constant(z, tf.float32)).numpy()
  assert np.all(np.isfinite(y))
  reference = tffb.ResidualBlock(g, tolerance=1e-13, max_iterations=10_000,
                                 dtype=tf.float64).forward(tf.constant(z)).numpy()
  scale = np.maximum(1.0, np.abs(z).max(axis=1, keepdims=True))
  # Converged to the relative tolerance, plus the float32 rounding of the solution.
  assert np.all(np.abs(y - reference) <= (1e-6 / (1 - 0.8) + 2e-7) * scale)


def test_argument_errors():
  g = lambda y: 0.5 * tf.tanh(y)
  for not_callable in (3.0, 0, ""):
    with pytest.raises(ValueError, match=f"residual_fn must be callable; got {not_callable!r}"):
      tffb.ResidualBlock(not_callable)
  with pytest.raises(ValueError, match="make_residual_fn must be callable"):
    tffb.ResidualBlock(make_residual_fn=3.0)
  for both in ({}, {"residual_fn": g, "make_residual_fn": lambda: g}):
    with pytest.raises(ValueError, match="exactly one of residual_fn"):
      tffb.ResidualBlock(**both)
  with pytest.raises(ValueError, match="log_det must be one of .* got 'hutchinson'"):
    tffb.ResidualBlock(g, log_det="hutchinson")
  with pytest.raises(ValueError, match="gradient must be one of .* got 'adjoint'"):
    tffb.ResidualBlock(g, gradient="adjoint")
  for method in ("series", "russian_roulette"):
    with pytest.raises(ValueError, match=f"log_det='{method}' is stochastic: pass a "
                                         "stateless seed"):
      tffb.ResidualBlock(g, log_det=method)
  with pytest.raises(ValueError, match="event_ndims must be at least 1"):
    tffb.ResidualBlock(g, event_ndims=0)
  with pytest.raises(ValueError, match="tolerance must be positive"):
    tffb.ResidualBlock(g, tolerance=0.0)
  with pytest.raises(ValueError, match="max_iterations at least 1"):
    tffb.ResidualBlock(g, max_iterations=0)


def test_num_exact_terms_reaches_the_roulette_under_both_spellings():
  # At one seed the two spellings give the same estimate, and the number of exact terms
  # changes it (so the argument reaches the estimator); the default is 2.
  w, b, y = _problem(2, 0.5)
  seed = tf.constant([3, 4], tf.int32)

  def ildj(**kwargs):
    bijector = tffb.ResidualBlock(_g(w, b), log_det="russian_roulette", seed=seed,
                                  dtype=tf.float64, **kwargs)
    return tf.function(lambda v: bijector.inverse_log_det_jacobian(v, event_ndims=1),
                       jit_compile=True)(tf.constant(y)).numpy()

  np.testing.assert_array_equal(ildj(num_exact_terms=5), ildj(n_exact_terms=5))
  assert np.abs(ildj(num_exact_terms=5) - ildj(num_exact_terms=1)).max() > 1e-6
  np.testing.assert_array_equal(ildj(), ildj(num_exact_terms=2))
  with pytest.raises(ValueError, match="Pass only num_exact_terms="):
    tffb.ResidualBlock(_g(w, b), num_exact_terms=2, n_exact_terms=2)


if __name__ == "__main__":
  # `main` of this file's py_test: under `bazel test` run the tests, not just the import.
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
