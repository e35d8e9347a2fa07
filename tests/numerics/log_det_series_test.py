"""tfp_flows.numerics.log_det_series: exact identities, unbiasedness in the mean, memory.

The test map g(x) = c tanh(x W^T + b) has the closed-form Jacobian
J = c diag(1 - tanh^2(x W^T + b)) W, and log|det(I + J)| (and its gradient, by autodiff
through `tf.linalg.slogdet` of that closed form) is the reference. With c = 0.7 and
||W||_2 <= 0.9, Lip(g) <= 0.63 < sqrt(1 - p) for p = 0.5, where the geometric roulette
has finite variance, so standard errors from samples are meaningful.

Three kinds of checks:
* identities with probes running over a basis (sum_i e_i^T A e_i = tr A): the series
  converges to the log-det, and the Neumann gradient equals the backprop gradient
  exactly (both are the gradient of the same weighted trace series);
* unbiasedness: means over 10,000 seeds within 4 standard errors of the exact values;
* graph size: the tensors the backward pass keeps do not grow with the number of terms
  under the Neumann gradient, and do under backprop.
"""

import functools

import keras
import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

from tfp_flows import estimators

SCALE = 0.7
SPECTRAL_NORMS = {2: 0.5, 4: 0.7, 8: 0.9}
NUM_SEEDS = 10_000
DISTRIBUTIONS = ["geometric", "poisson"]


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


def _exact(w_var, b, x):
  """(log|det(I + J)| per row, d/dW of their sum), through slogdet of the closed form."""
  with tf.GradientTape() as tape:
    t = tf.tanh(tf.constant(x) @ tf.transpose(w_var) + b)
    jacobian = SCALE * (1.0 - t**2)[:, :, None] * w_var[None]
    log_det = tf.linalg.slogdet(tf.eye(x.shape[1], dtype=tf.float64) + jacobian)[1]
    total = tf.reduce_sum(log_det)
  return log_det.numpy(), tape.gradient(total, w_var).numpy()


def _basis(x):
  """Rows repeated D times with probes e_1..e_D: summing D estimates gives the trace."""
  dim = x.shape[1]
  return (tf.constant(np.repeat(x, dim, axis=0)),
          tf.tile(tf.eye(dim, dtype=tf.float64), [x.shape[0], 1]))


def _sum_over_basis(values, dim):
  return tf.reduce_sum(tf.reshape(values, [-1, dim]), axis=1)


@pytest.mark.parametrize("dim", [2, 4, 8])
def test_power_series_with_basis_probes_converges_to_log_det(dim):
  w, b, x = _problem(dim)
  exact = _exact(tf.Variable(w), b, x)[0]
  basis_x, basis = _basis(x)
  t = np.tanh(x @ w.T + b)
  lip = max(np.linalg.norm(SCALE * (1.0 - t[i]**2)[:, None] * w, 2) for i in range(len(x)))
  for num_terms in [2, 4, 8, 60]:
    series = estimators.power_series_log_det(_g(w, b), basis_x, basis, num_terms)
    error = np.abs(_sum_over_basis(series, dim).numpy() - exact).max()
    # |sum_{k>n} (-1)^(k+1)/k tr(J^k)| <= D L^(n+1) / ((n+1)(1-L)).
    bound = dim * lip**(num_terms + 1) / ((num_terms + 1) * (1.0 - lip))
    print(f"D={dim} n={num_terms}: error {error:.3g}, bound {bound:.3g}")
    assert error <= bound + 1e-14
  assert error < 1e-10


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("dim", [2, 4, 8])
def test_neumann_gradient_equals_backprop_gradient_with_basis_probes(dim, distribution):
  """With a basis of probes both gradients are d/dtheta of one weighted trace series."""
  w, b, x = _problem(dim)
  w_var, b_var = tf.Variable(w), tf.Variable(b)
  basis_x, basis = _basis(x)
  exact_value, exact_grad = _exact(w_var, b, x)
  seed = tf.constant([dim, 3])
  results = {}
  for method in ["series", "russian_roulette"]:
    for gradient in ["neumann", "backprop"]:
      with tf.GradientTape() as tape:
        tape.watch(basis_x)
        if method == "series":
          value = estimators.power_series_log_det(_g(w_var, b_var), basis_x, basis, 60,
                                                  gradient=gradient)
        else:
          value = estimators.russian_roulette_log_det(
              _g(w_var, b_var), basis_x, basis, seed, n_exact_terms=2,
              distribution=distribution, gradient=gradient)
        total = tf.reduce_sum(value)
      grad_w, grad_b, grad_x = tape.gradient(total, [w_var, b_var, basis_x])
      # Only the sum over a row's D copies is the gradient of that row's trace series.
      grad_x = tf.reduce_sum(tf.reshape(grad_x, [-1, dim, dim]), axis=1)
      results[method, gradient] = [t.numpy() for t in (value, grad_w, grad_b, grad_x)]
  for method in ["series", "russian_roulette"]:
    neumann, backprop = results[method, "neumann"], results[method, "backprop"]
    np.testing.assert_array_equal(neumann[0], backprop[0])
    for got, want in zip(neumann[1:], backprop[1:]):
      assert np.abs(want).max() > 1e-3
      np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
  series = results["series", "neumann"]
  np.testing.assert_allclose(_sum_over_basis(series[0], dim).numpy(), exact_value,
                             rtol=0, atol=1e-10)
  np.testing.assert_allclose(series[1], exact_grad, rtol=0, atol=1e-10)


def test_keras_variables_receive_the_neumann_gradient():
  dim = 4
  _, _, x = _problem(dim)
  dense = keras.layers.Dense(dim, activation="tanh", dtype="float64")
  dense.build((None, dim))
  kernel = dense.kernel.numpy()
  dense.kernel.assign(kernel * 0.9 / np.linalg.norm(kernel, 2))
  dense.bias.assign(np.linspace(-0.5, 0.5, dim))

  def g(z):
    return SCALE * dense(z)

  basis_x, basis = _basis(x)
  grads = {}
  for gradient in ["neumann", "backprop"]:
    with tf.GradientTape() as tape:
      total = tf.reduce_sum(estimators.russian_roulette_log_det(
          g, basis_x, basis, tf.constant([1, 2]), gradient=gradient))
    grads[gradient] = tape.gradient(total, dense.trainable_variables)
  assert len(grads["neumann"]) == 2
  for got, want in zip(grads["neumann"], grads["backprop"]):
    assert got is not None and np.abs(want.numpy()).max() > 1e-3
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-12)


# The backprop gradient's statistics are checked for the geometric count only: it shares
# the value (and the count sampler) with the Neumann path, and each extra gradient adds
# seconds of XLA compilation.
GRADIENTS_CHECKED = {"geometric": ("neumann", "backprop"), "poisson": ("neumann",)}


@functools.lru_cache(maxsize=None)
def _roulette_samples(dim, distribution):
  """Per seed: (estimates [rows], {gradient: d/dW of the rows' sum}), and the exact values.

  One XLA-compiled `tf.map_fn` over 10,000 seeds; each call draws its own probes and
  its own count N (shared by the rows of that call), so samples are i.i.d. per row. The
  value does not depend on `gradient` (checked elsewhere), so it is taken from the
  Neumann call.
  """
  w, b, x = _problem(dim)
  w_var = tf.Variable(w)
  g = _g(w_var, b)
  gradients = GRADIENTS_CHECKED[distribution]

  def one(seed):
    outputs = []
    for gradient in gradients:
      with tf.GradientTape() as tape:
        log_det = estimators.estimate_log_det(g, tf.constant(x), "russian_roulette",
                                              gradient, seed, distribution=distribution)
        total = tf.reduce_sum(log_det)
      outputs.append(tape.gradient(total, w_var))
      if gradient == "neumann":
        outputs.insert(0, log_det)
    return outputs

  seeds = tf.random.experimental.stateless_split(
      tf.constant([dim, DISTRIBUTIONS.index(distribution)], tf.int64), NUM_SEEDS)
  run = tf.function(
      lambda s: tf.map_fn(one, s, fn_output_signature=[tf.float64] * (len(gradients) + 1)),
      jit_compile=True)
  values, *grads = [t.numpy() for t in run(seeds)]
  return values, dict(zip(gradients, grads)), _exact(w_var, b, x)


def _z_scores(samples, expected):
  se = samples.std(axis=0, ddof=1) / np.sqrt(len(samples))
  return (samples.mean(axis=0) - expected) / se, se


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("dim", [2, 4, 8])
def test_russian_roulette_is_unbiased(dim, distribution):
  values, _, (exact, _) = _roulette_samples(dim, distribution)
  z, se = _z_scores(values, exact)
  print(f"D={dim} {distribution}: log-det {exact}, mean {values.mean(0)}, SE {se}, z {z}")
  assert np.all(se > 0) and np.abs(z).max() < 4.0


@pytest.mark.parametrize("distribution,gradient",
                         [(d, g) for d in DISTRIBUTIONS for g in GRADIENTS_CHECKED[d]])
@pytest.mark.parametrize("dim", [2, 4, 8])
def test_gradient_is_unbiased(dim, distribution, gradient):
  """Mean d/dW over 10,000 seeds within 4 SE of the exact gradient, entry by entry.

  The D^2 entries are tested separately at 4 SE (two-sided 6e-5 each, so about 0.5%
  for all 64 entries at D = 8 if the estimator is unbiased); the mean squared z-score
  is printed as an aggregate check (about 1 when the SEs are right).
  """
  _, grads, (_, exact_grad) = _roulette_samples(dim, distribution)
  samples = grads[gradient]
  z, se = _z_scores(samples, exact_grad)
  print(f"D={dim} {distribution} {gradient}: SE {se.min():.3g}..{se.max():.3g}, "
        f"max |z| {np.abs(z).max():.2f}, mean z^2 {np.mean(z**2):.2f}")
  assert np.all(se > 0) and np.abs(z).max() < 4.0


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_roulette_count_law_and_weights_on_a_linear_map(distribution):
  """D = 1, g(x) = a x: v^T J^k v = a^k, so each estimate names its count N exactly.

  Every estimate must equal one entry of the table
  sum_{k<=2} (-1)^(k+1) a^k / k + sum_{m=1}^{N} (-1)^(k+1) a^k / (k P(N >= m)), k = 2 + m
  (tails from scipy), which checks the weights; the recovered N must follow the law
  (chi-square goodness of fit); a cap max_num_terms = 3 must clip N at 1.
  """
  a, num_seeds, n_exact = 0.6, 4000, 2
  law = scipy.stats.geom(0.5, loc=-1) if distribution == "geometric" else scipy.stats.poisson(2)
  table = []
  for count in range(30):
    terms = [(-1)**(k + 1) * a**k / k for k in range(1, n_exact + count + 1)]
    weights = [1.0] * n_exact + [1.0 / law.sf(m - 1) for m in range(1, count + 1)]
    table.append(np.dot(terms, weights))
  table = np.array(table)

  def one(seed):
    x, probe = tf.ones([1, 1], tf.float64), tf.ones([1, 1], tf.float64)
    return [estimators.russian_roulette_log_det(
        lambda z: a * z, x, probe, seed, n_exact_terms=n_exact, distribution=distribution,
        max_num_terms=cap)[0] for cap in (64, n_exact + 1)]

  seeds = tf.random.experimental.stateless_split(tf.constant([9, 9], tf.int64), num_seeds)
  run = tf.function(lambda s: tf.map_fn(one, s, fn_output_signature=[tf.float64] * 2),
                    jit_compile=True)
  uncapped, capped = (t.numpy() for t in run(seeds))
  counts = []
  for values in (uncapped, capped):
    distance = np.abs(values[:, None] - table[None, :])
    assert distance.min(axis=1).max() < 1e-12
    counts.append(distance.argmin(axis=1))
  assert counts[1].max() == 1 and np.array_equal(counts[1], np.minimum(counts[0], 1))

  top = 5
  observed = np.bincount(np.minimum(counts[0], top), minlength=top + 1)
  expected = np.append(law.pmf(np.arange(top)), law.sf(top - 1)) * num_seeds
  p_value = scipy.stats.chisquare(observed, expected).pvalue
  z = (uncapped.mean() - np.log1p(a)) / (uncapped.std(ddof=1) / np.sqrt(num_seeds))
  print(f"{distribution}: N counts {observed}, expected {np.round(expected, 1)}, "
        f"chi-square p {p_value:.3f}; mean {uncapped.mean():.5f} vs log(1.6) "
        f"{np.log1p(a):.5f}, z {z:.2f}")
  assert p_value > 1e-3 and abs(z) < 4.0


def _estimator(method, gradient, distribution, dtype):
  """seed -> [log-det, d/dW, d/dx] of one `estimate_log_det` call on a fixed problem."""
  w, b, x = _problem(4)
  w_var = tf.Variable(w.astype(dtype))

  def run(seed):
    x_t = tf.constant(x, dtype)
    with tf.GradientTape() as tape:
      tape.watch(x_t)
      log_det = estimators.estimate_log_det(_g(w_var, b), x_t, method, gradient, seed,
                                            num_terms=6, distribution=distribution)
      total = tf.reduce_sum(log_det)
    return [log_det] + tape.gradient(total, [w_var, x_t])

  return run


# One XLA compilation each; together they cover every code path (the exact method, the
# unrolled series, the while loop under both gradients, both count samplers).
CONFIGS = [("exact", "backprop", "geometric"), ("series", "neumann", "geometric"),
           ("russian_roulette", "backprop", "geometric"),
           ("russian_roulette", "neumann", "geometric"),
           ("russian_roulette", "neumann", "poisson")]


@pytest.mark.parametrize("method,gradient,distribution", CONFIGS)
def test_fixed_seed_xla_equals_eager_and_float32(method, gradient, distribution):
  seed = tf.constant([5, 6])
  run64 = _estimator(method, gradient, distribution, np.float64)
  eager = [t.numpy() for t in run64(seed)]
  again = [t.numpy() for t in run64(seed)]
  xla = [t.numpy() for t in tf.function(run64, jit_compile=True)(seed)]
  for e, r, j in zip(eager, again, xla):
    np.testing.assert_array_equal(r, e)
    np.testing.assert_allclose(j, e, rtol=1e-12, atol=1e-13)
  if method != "exact":
    other = run64(tf.constant([5, 7]))[0].numpy()
    assert np.abs(other - eager[0]).max() > 1e-3
  run32 = _estimator(method, gradient, distribution, np.float32)
  single = [t.numpy() for t in run32(seed)]
  for s, e in zip(single, eager):
    assert s.dtype == np.float32
    np.testing.assert_allclose(s, e, rtol=1e-4, atol=1e-5)


def test_image_events_and_return_output():
  """[N, H, W, C] events: a 60-term series over a basis of images equals the exact log-det."""
  w, b, x = _problem(8, rows=2)

  def g(z):
    return tf.reshape(_g(w, b)(tf.reshape(z, [-1, 8])), tf.shape(z))

  images = tf.constant(x.reshape([2, 2, 2, 2]))
  exact = estimators.exact_jacobian_log_det(g, images).numpy()
  basis_x, basis = _basis(x)

  def to_images(t):
    return tf.reshape(t, [-1, 2, 2, 2])

  gx, series = estimators.power_series_log_det(g, to_images(basis_x), to_images(basis), 60,
                                               gradient="neumann", return_output=True)
  np.testing.assert_allclose(_sum_over_basis(series, 8).numpy(), exact, rtol=0, atol=1e-10)
  np.testing.assert_allclose(gx.numpy(), g(to_images(basis_x)).numpy(), rtol=0, atol=0)
  for method in ["exact", "series", "russian_roulette"]:
    gx, log_det = estimators.estimate_log_det(g, images, method, seed=[1, 1],
                                              return_output=True)
    assert log_det.shape == [2]
    np.testing.assert_allclose(gx.numpy(), g(images).numpy(), rtol=0, atol=0)


def _backward_graph_size(method, gradient, n_exact_terms):
  """(ops, forward tensors consumed by the backward pass) of d/dW in a traced graph.

  Ops are listed in creation order, so those created by `tape.gradient` follow the
  forward pass; the forward tensors they read are what the gradient keeps alive.
  """
  w, b, x = _problem(4)
  w_var = tf.Variable(w)
  forward_count = []

  @tf.function
  def step(x, probe, seed):
    with tf.GradientTape() as tape:
      if method == "series":
        log_det = estimators.power_series_log_det(_g(w_var, b), x, probe, n_exact_terms,
                                                  gradient=gradient)
      else:
        log_det = estimators.russian_roulette_log_det(
            _g(w_var, b), x, probe, seed, n_exact_terms=n_exact_terms, gradient=gradient)
      total = tf.reduce_sum(log_det)
    forward_count.append(len(total.graph.get_operations()))
    return tape.gradient(total, w_var)

  probe = tf.ones_like(x)
  ops = step.get_concrete_function(tf.constant(x), probe, tf.constant([0, 0])).graph
  ops = ops.get_operations()
  forward, backward = set(ops[:forward_count[0]]), ops[forward_count[0]:]
  kept = {t.ref() for op in backward for t in op.inputs if t.op in forward}
  return len(backward), len(kept)


@pytest.mark.parametrize("method", ["series", "russian_roulette"])
def test_neumann_gradient_memory_does_not_grow_with_terms(method):
  sizes = {(gradient, n): _backward_graph_size(method, gradient, n)
           for gradient in ["neumann", "backprop"] for n in [2, 8]}
  print(f"{method}: (backward ops, kept forward tensors) {sizes}")
  assert sizes["neumann", 8] == sizes["neumann", 2]
  ops_2, kept_2 = sizes["backprop", 2]
  ops_8, kept_8 = sizes["backprop", 8]
  # Each extra backprop term adds its own second-order pass and the tensors it reads.
  assert ops_8 >= ops_2 + 6 * 5 and kept_8 >= kept_2 + 6 * 2


def test_errors_name_the_bad_value():
  g, x = tf.tanh, tf.zeros([2, 3])
  with pytest.raises(ValueError, match="'lu'"):
    estimators.estimate_log_det(g, x, method="lu")
  with pytest.raises(ValueError, match="'reinforce'"):
    estimators.estimate_log_det(g, x, method="exact", gradient="reinforce")
  with pytest.raises(ValueError, match="needs a seed"):
    estimators.estimate_log_det(g, x, method="series")
  with pytest.raises(ValueError, match="'binomial'"):
    estimators.russian_roulette_log_det(g, x, x, [0, 0], distribution="binomial")
  with pytest.raises(ValueError, match="geometric_p.*1.0"):
    estimators.russian_roulette_log_det(g, x, x, [0, 0], geometric_p=1.0)
  with pytest.raises(ValueError, match="poisson_rate.*-1"):
    estimators.neumann_log_det(g, x, x, [0, 0], distribution="poisson", poisson_rate=-1.0)
  with pytest.raises(ValueError, match="num_terms.*0"):
    estimators.power_series_log_det(g, x, x, 0)
  with pytest.raises(ValueError, match="max_num_terms.*1"):
    estimators.russian_roulette_log_det(g, x, x, [0, 0], n_exact_terms=2, max_num_terms=1)


@pytest.mark.parametrize("spelling", ["num_exact_terms", "n_exact_terms"])
def test_num_exact_terms_and_its_older_alias_set_the_terms(spelling):
  # g(x) = a x: J = a I and v^T J^k v = a^k |v|^2 = a^k D for Rademacher v. With
  # max_num_terms equal to the exact terms no random term can run, so every entry
  # point returns the truncated series D sum_{k<=n} (-1)^(k+1) a^k / k exactly.
  a, dim, n = 0.6, 4, 3
  g = lambda z: a * z
  x = tf.constant(_problem(dim)[2])
  expected = dim * sum((-1) ** (k + 1) * a ** k / k for k in range(1, n + 1))
  assert abs(expected - dim * sum((-1) ** (k + 1) * a ** k / k for k in (1, 2))) > 0.1
  probe = tf.ones_like(x)
  common = {spelling: n, "max_num_terms": n}
  calls = {
      "russian_roulette": lambda: estimators.russian_roulette_log_det(
          g, x, probe, [1, 2], **common),
      "neumann": lambda: estimators.neumann_log_det(g, x, probe, [1, 2], **common),
      "estimate": lambda: estimators.estimate_log_det(g, x, seed=[1, 2], **common),
  }
  for name, call in calls.items():
    np.testing.assert_allclose(call().numpy(), [expected] * 3, rtol=1e-12, err_msg=name)
    xla = tf.function(call, jit_compile=True)()
    np.testing.assert_allclose(xla.numpy(), [expected] * 3, rtol=1e-12, err_msg=name)
  with pytest.raises(ValueError, match=r"num_exact_terms= and n_exact_terms= are two "
                                       r"spellings .* Pass only num_exact_terms=\."):
    estimators.neumann_log_det(g, x, probe, [1, 2], num_exact_terms=2, n_exact_terms=2)
  with pytest.raises(ValueError, match=rf"{spelling} must be an int >= 0; got -1"):
    estimators.russian_roulette_log_det(g, x, probe, [1, 2], **{spelling: -1})


def test_zero_residual_gives_zero_and_float32_compiles():
  """g = 0 (an all-zero residual block) has log-det 0 by every method; float32 under XLA."""
  x = tf.constant(_problem(4)[2], tf.float32)
  for method in ["exact", "series", "russian_roulette"]:
    for gradient in ["neumann", "backprop"]:
      log_det = estimators.estimate_log_det(tf.zeros_like, x, method, gradient, seed=[3, 4])
      np.testing.assert_array_equal(log_det.numpy(), np.zeros(3, np.float32))
  run = _estimator("russian_roulette", "neumann", "poisson", np.float32)
  seed = tf.constant([8, 1])
  eager = [t.numpy() for t in run(seed)]
  xla = [t.numpy() for t in tf.function(run, jit_compile=True)(seed)]
  for e, j in zip(eager, xla):
    assert j.dtype == np.float32
    np.testing.assert_allclose(j, e, rtol=1e-5, atol=1e-6)
