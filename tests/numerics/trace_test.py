"""tfp_flows.numerics.trace (through tff.estimators) against closed forms, and Hutchinson's estimator in the mean.

The test map g(x) = c tanh(x W^T + b) has the closed-form Jacobian
J = c diag(1 - tanh^2(x W^T + b)) W, so log|det(I + J)| and tr J are known to float64
precision without autodiff.
"""

import numpy as np
import pytest
import tensorflow as tf

from tfp_flows import estimators

SCALE = 0.7
SPECTRAL_NORMS = {2: 0.5, 4: 0.7, 8: 0.9}
NUM_PROBES = 10_000


def _problem(dim, rows=3):
  """(W, b, x) in float64 numpy with ||W||_2 = SPECTRAL_NORMS[dim]."""
  rng = np.random.default_rng(100 + dim)
  w = rng.normal(size=[dim, dim])
  w *= SPECTRAL_NORMS[dim] / np.linalg.norm(w, 2)
  return w, 0.5 * rng.normal(size=[dim]), rng.normal(size=[rows, dim])


def _g(w, b):
  def g(z):
    w_t = tf.cast(w, z.dtype)
    return SCALE * tf.tanh(tf.linalg.matmul(z, w_t, transpose_b=True) + tf.cast(b, z.dtype))
  return g


def _jacobian(w, b, x):
  t = np.tanh(x @ w.T + b)
  return SCALE * (1.0 - t**2)[:, :, None] * w


@pytest.mark.parametrize("dim", [2, 4, 8])
def test_exact_jacobian_log_det_matches_closed_form(dim):
  w, b, x = _problem(dim)
  expected = np.linalg.slogdet(np.eye(dim) + _jacobian(w, b, x))[1]
  got = estimators.exact_jacobian_log_det(_g(w, b), tf.constant(x)).numpy()
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)
  got32 = estimators.exact_jacobian_log_det(_g(w, b), tf.constant(x, tf.float32))
  assert got32.dtype == tf.float32
  np.testing.assert_allclose(got32.numpy(), expected, rtol=0, atol=1e-5)


def test_exact_jacobian_log_det_image_event_xla_and_gradient():
  """An [N, H, W, C] event is flattened; XLA equals eager; the gradient is (I + J)^-T."""
  w, b, x = _problem(8, rows=2)
  images = tf.constant(x.reshape([2, 2, 2, 2]))

  def g_image(z):
    return tf.reshape(_g(w, b)(tf.reshape(z, [-1, 8])), tf.shape(z))

  expected = np.linalg.slogdet(np.eye(8) + _jacobian(w, b, x))[1]
  gx, got = estimators.exact_jacobian_log_det(g_image, images, return_output=True)
  np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-10)
  np.testing.assert_allclose(gx.numpy(), g_image(images).numpy(), rtol=0, atol=0)
  xla = tf.function(estimators.exact_jacobian_log_det, jit_compile=True)(g_image, images)
  np.testing.assert_allclose(xla.numpy(), got.numpy(), rtol=0, atol=1e-12)

  # d/dW sum_n log|det(I + J_n)|: autodiff through QR against autodiff through slogdet
  # of the closed-form Jacobian.
  w_var = tf.Variable(w)
  with tf.GradientTape(persistent=True) as tape:
    ours = tf.reduce_sum(estimators.exact_jacobian_log_det(_g(w_var, b), tf.constant(x)))
    t = tf.tanh(tf.constant(x) @ tf.transpose(w_var) + b)
    jacobian = SCALE * (1.0 - t**2)[:, :, None] * w_var[None]
    reference = tf.reduce_sum(tf.linalg.slogdet(tf.eye(8, dtype=tf.float64) + jacobian)[1])
  np.testing.assert_allclose(tape.gradient(ours, w_var).numpy(),
                             tape.gradient(reference, w_var).numpy(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("dim", [2, 4, 8])
def test_exact_trace_matches_closed_form(dim):
  w, b, x = _problem(dim)
  expected = np.trace(_jacobian(w, b, x), axis1=1, axis2=2)
  got = estimators.exact_trace(_g(w, b), tf.constant(x)).numpy()
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
  xla = tf.function(estimators.exact_trace, jit_compile=True)(_g(w, b), tf.constant(x))
  np.testing.assert_allclose(xla.numpy(), got, rtol=0, atol=1e-12)


@pytest.mark.parametrize("distribution", ["rademacher", "normal"])
@pytest.mark.parametrize("dim", [2, 4, 8])
def test_hutchinson_mean_within_4_standard_errors(dim, distribution):
  """10,000 probes per row: |mean - tr J| / SE < 4, SE = sample std / sqrt(10,000)."""
  w, b, x = _problem(dim)
  rows = x.shape[0]
  tiled = tf.constant(np.tile(x, [NUM_PROBES, 1]))  # row r of copy s at s * rows + r
  probes = estimators.hutchinson_probes(tf.shape(tiled), tf.constant([dim, 5]), tf.float64,
                                        distribution)
  samples = estimators.hutchinson_trace(_g(w, b), tiled, probes).numpy()
  samples = samples.reshape([NUM_PROBES, rows])
  expected = np.trace(_jacobian(w, b, x), axis1=1, axis2=2)
  se = samples.std(axis=0, ddof=1) / np.sqrt(NUM_PROBES)
  z = (samples.mean(axis=0) - expected) / se
  print(f"D={dim} {distribution}: trace {expected}, mean {samples.mean(0)}, SE {se}, z {z}")
  assert np.all(se > 0) and np.all(np.abs(z) < 4.0)


def _sum_rows(values, dim):
  return tf.reduce_sum(tf.reshape(values, [-1, dim]), axis=1)


def test_hutchinson_over_a_basis_is_the_trace_and_its_gradient():
  """sum_i e_i^T J e_i = tr J exactly, and the estimate differentiates like the trace."""
  dim = 4
  w, b, x = _problem(dim)
  w_var = tf.Variable(w)
  basis_x = tf.constant(np.repeat(x, dim, axis=0))
  basis = tf.tile(tf.eye(dim, dtype=tf.float64), [x.shape[0], 1])
  with tf.GradientTape(persistent=True) as tape:
    fx, hutchinson = estimators.hutchinson_trace(_g(w_var, b), basis_x, basis,
                                                 return_output=True)
    hutchinson = _sum_rows(hutchinson, dim)
    exact = estimators.exact_trace(_g(w_var, b), tf.constant(x))
    total_h, total_e = tf.reduce_sum(hutchinson), tf.reduce_sum(exact)
  np.testing.assert_allclose(hutchinson.numpy(), exact.numpy(), rtol=0, atol=1e-14)
  np.testing.assert_allclose(fx.numpy(), _g(w, b)(basis_x).numpy(), rtol=0, atol=0)
  xla = tf.function(estimators.hutchinson_trace, jit_compile=True)(_g(w, b), basis_x, basis)
  np.testing.assert_allclose(_sum_rows(xla, dim), hutchinson.numpy(), rtol=0, atol=1e-14)
  grad_h, grad_e = tape.gradient(total_h, w_var), tape.gradient(total_e, w_var)
  assert np.abs(grad_e.numpy()).max() > 0.1
  np.testing.assert_allclose(grad_h.numpy(), grad_e.numpy(), rtol=0, atol=1e-13)


@pytest.mark.parametrize("distribution", ["rademacher", "normal"])
def test_probes_moments_determinism_and_xla(distribution):
  seed = tf.constant([4, 2], tf.int64)
  shape = tf.constant([200_000, 2])
  v = estimators.hutchinson_probes(shape, seed, tf.float64, distribution).numpy()
  n = v.shape[0]
  # E[v] = 0 and E[v v^T] = I, within 4 standard errors (Var(v_i^2) is 0 or 2).
  assert np.all(np.abs(v.mean(0)) < 4.0 / np.sqrt(n))
  assert abs(np.mean(v[:, 0] * v[:, 1])) < 4.0 / np.sqrt(n)
  if distribution == "rademacher":
    assert set(np.unique(v)) == {-1.0, 1.0}
  else:
    assert np.all(np.abs((v**2).mean(0) - 1.0) < 4.0 * np.sqrt(2.0 / n))
  again = estimators.hutchinson_probes(shape, seed, tf.float64, distribution).numpy()
  other = estimators.hutchinson_probes(shape, seed + 1, tf.float64, distribution).numpy()
  xla = tf.function(estimators.hutchinson_probes, jit_compile=True)(
      shape, seed, tf.float64, distribution).numpy()
  np.testing.assert_array_equal(again, v)
  # A row's probe does not depend on the batch size.
  fewer = estimators.hutchinson_probes([7, 2], seed, tf.float64, distribution).numpy()
  np.testing.assert_array_equal(fewer, v[:7])
  assert np.mean(other == v) < 0.6
  np.testing.assert_allclose(xla, v, rtol=1e-14, atol=1e-14)
  v32 = estimators.hutchinson_probes(shape, seed, tf.float32, distribution)
  assert v32.dtype == tf.float32
  np.testing.assert_allclose(v32.numpy(), v, rtol=1e-6, atol=1e-6)


def test_content_keyed_probes_follow_the_point_not_its_batch_position():
  rng = np.random.default_rng(5)
  x = tf.constant(rng.normal(size=[6, 3, 2]))
  seed = tf.constant([3, 9], tf.int64)
  v = estimators.content_keyed_probes(x, seed).numpy()
  assert v.shape == (6, 3, 2) and set(np.unique(v)) == {-1.0, 1.0}
  order = [4, 0, 5, 2, 1, 3]
  np.testing.assert_array_equal(
      estimators.content_keyed_probes(tf.gather(x, order), seed).numpy(), v[order])
  np.testing.assert_array_equal(estimators.content_keyed_probes(x[2:3], seed).numpy(),
                                v[2:3])
  xla = tf.function(estimators.content_keyed_probes, jit_compile=True)(x, seed).numpy()
  np.testing.assert_array_equal(xla, v)
  # Keyed at 8 mantissa bits: a few ulps of round-off (an exported graph's kernels)
  # change a row's probe only across a rounding boundary, ~D * 2 / 2^15 of rows here.
  rows = tf.constant(rng.normal(size=[5000, 4]).astype(np.float32))
  nudged = tf.constant(np.nextafter(np.nextafter(rows.numpy(), np.inf), np.inf))
  changed = np.any(estimators.content_keyed_probes(rows, seed).numpy()
                   != estimators.content_keyed_probes(nudged, seed).numpy(), axis=1)
  assert changed.mean() < 0.005, changed.mean()
  # -0.0 and 0.0 are one point; float32 inputs give float32 probes.
  zeros = tf.constant([[0.0, 1.0], [-0.0, 1.0]])
  keyed = estimators.content_keyed_probes(zeros, seed)
  assert keyed.dtype == tf.float32
  np.testing.assert_array_equal(keyed.numpy()[0], keyed.numpy()[1])


def test_content_keyed_probes_are_hutchinson_probes_over_seeds():
  # Over seeds (the hash family), one fixed point's probe has E[v] = 0 and
  # E[v v^T] = I, so v^T A v averages to tr(A); the bounds are 4 standard errors.
  num_seeds, dim = 3000, 4
  rng = np.random.default_rng(6)
  x = tf.constant(rng.normal(size=[1, dim]))
  matrix = rng.normal(size=[dim, dim])
  draw = tf.function(lambda seed: estimators.content_keyed_probes(x, seed)[0])
  v = np.stack([draw(tf.constant([s, 1], tf.int64)).numpy() for s in range(num_seeds)])
  assert np.all(np.abs(v.mean(0)) < 4.0 / np.sqrt(num_seeds))
  off_diagonal = (v.T @ v / num_seeds)[~np.eye(dim, dtype=bool)]
  assert np.all(np.abs(off_diagonal) < 4.0 / np.sqrt(num_seeds))
  estimates = np.einsum("si,ij,sj->s", v, matrix, v)
  standard_error = estimates.std() / np.sqrt(num_seeds)
  assert abs(estimates.mean() - np.trace(matrix)) < 4 * standard_error
  # Across points with one seed the probes are unrelated too.
  many = estimators.content_keyed_probes(
      tf.constant(rng.normal(size=[20_000, dim])), tf.constant([1, 2])).numpy()
  assert np.all(np.abs(many.mean(0)) < 4.0 / np.sqrt(len(many)))
  assert abs(np.mean(many[:, 0] * many[:, 1])) < 4.0 / np.sqrt(len(many))


def test_errors_name_the_bad_value():
  with pytest.raises(ValueError, match="'uniform'"):
    estimators.hutchinson_probes([2, 2], [0, 0], distribution="uniform")
  with pytest.raises(ValueError, match="floating"):
    estimators.hutchinson_probes([2, 2], [0, 0], dtype=tf.int32)
  with pytest.raises(ValueError, match="rank of at least 2"):
    estimators.exact_trace(tf.tanh, tf.zeros([3]))
  with pytest.raises(ValueError, match="rank of at least 2"):
    estimators.hutchinson_trace(tf.tanh, tf.zeros([3]), tf.ones([3]))
