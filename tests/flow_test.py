"""tfp_flows.FlowModel: log_prob against closed forms, sampling, XLA, training, errors."""

import math
import sys

import keras
import numpy as np
import pytest
import scipy.stats
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_flows as tff
from tfp_flows.bijectors import conditioning

tfd = tfp.distributions


@pytest.fixture(autouse=True)
def _seed():
  keras.utils.set_random_seed(0)


def _act_norm(loc, log_scale):
  layer = tff.layers.ActNorm(data_init=False)
  return layer, (np.asarray(loc, "float32"), np.asarray(log_scale, "float32"))


def _set_act_norm(layer, loc, log_scale):
  layer.loc.assign(loc)
  layer.log_scale.assign(log_scale)


def _normal_log_pdf(x, loc, scale):
  """log N(x; loc, scale^2) by hand, float64."""
  x = np.asarray(x, np.float64)
  return -0.5 * ((x - loc) / scale) ** 2 - np.log(scale) - 0.5 * math.log(2 * math.pi)


def _perturb(model, seed=1, scale=0.1):
  rng = np.random.default_rng(seed)
  for weight in model.trainable_weights:
    value = keras.ops.convert_to_numpy(weight)
    weight.assign(value + scale * rng.normal(size=value.shape).astype(value.dtype))


def _coupling_flow(event_shape=(2,), hidden=(8,)):
  return tff.FlowModel([
      tff.layers.ActNorm(),
      tff.layers.AffineCoupling(hidden_units=hidden, scale="exp"),
      tff.layers.AffineCoupling(hidden_units=hidden, reverse=True),
  ], list(event_shape))


# --- log_prob against independent computations --------------------------------------


def test_act_norm_flow_is_a_diagonal_normal():
  # ActNorm's forward (base -> data) is x = z e^s + loc: data ~ N(loc, e^{2s}).
  loc, log_scale = np.array([0.5, -2.0, 3.0]), np.array([0.3, -0.7, 1.1])
  model = tff.FlowModel([tff.layers.ActNorm(data_init=False)], [3])
  _set_act_norm(model.flow_layers[0], loc, log_scale)
  x = np.random.default_rng(0).normal(size=[5, 3]) * 2.0
  expected = _normal_log_pdf(x, loc, np.exp(log_scale)).sum(-1)
  np.testing.assert_allclose(model.log_prob(x.astype("float32")).numpy(), expected,
                             rtol=1e-5)
  # float64 numpy input is cast to the model's dtype, not rejected.
  np.testing.assert_allclose(model.log_prob(x).numpy(), expected, rtol=1e-5)
  # Deterministic and repeatable.
  np.testing.assert_array_equal(model.log_prob(x).numpy(), model.log_prob(x).numpy())


@pytest.mark.parametrize("preset", ["spline", "residual", "ffjord"])
def test_float64_models_compute_in_float64(preset):
  # Under a float64 dtype policy every layer and the base are float64: the identity
  # start of the flow then gives the standard-normal log-density to float64 round-off.
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy("float64")
  try:
    model = {"spline": lambda: tff.models.NeuralSplineFlow(2, num_layers=2,
                                                           hidden_units=(8,),
                                                           linear="permute"),
             "residual": lambda: tff.models.ResidualFlow([2], num_blocks=2,
                                                         hidden_units=(8,), actnorm=False),
             "ffjord": lambda: tff.models.FFJORDFlow([2], hidden_units=(8,),
                                                     actnorm=False)}[preset]()
    if preset == "residual":  # g starts random; a zero last kernel makes it zero
      for block in model.flow_layers:
        last = block._net[-1]  # pylint: disable=protected-access
        last.kernel.assign(np.zeros(last.kernel.shape))
        last.bias.assign(np.zeros(last.bias.shape))
    x = np.random.default_rng(0).normal(size=[5, 2])
    log_prob = model.log_prob(x)
    assert log_prob.dtype == tf.float64
    np.testing.assert_allclose(log_prob.numpy(), scipy.stats.norm.logpdf(x).sum(-1),
                               rtol=1e-12)
    assert model.sample(3, seed=(1, 2)).dtype == tf.float64
  finally:
    keras.config.set_dtype_policy(previous)


def test_layers_are_listed_data_side_first():
  # [ActNorm(a), GaussianPrior(p)]: base -> data applies p first, then a, so
  # x = (z s_p + m_p) s_a + m_a ~ N(m_p s_a + m_a, (s_p s_a)^2). The other order
  # would give N(m_a s_p + m_p, ...), a different density.
  m_a, s_a = np.array([1.0, -1.0]), np.array([2.0, 0.5])
  m_p, s_p = np.array([0.5, 3.0]), np.array([0.25, 1.5])
  model = tff.FlowModel([tff.layers.ActNorm(data_init=False), tff.layers.GaussianPrior()],
                        [2])
  _set_act_norm(model.flow_layers[0], m_a, np.log(s_a))
  model.flow_layers[1].table.assign(np.concatenate([m_p, np.log(s_p)])[None].astype(
      "float32"))
  x = np.random.default_rng(1).normal(size=[6, 2]).astype("float32") * 3.0
  expected = _normal_log_pdf(x, m_p * s_a + m_a, s_p * s_a).sum(-1)
  np.testing.assert_allclose(model.log_prob(x).numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("lu", [False, True])
def test_conv1x1_flow_is_a_correlated_normal_per_pixel(lu):
  # x = W z at every pixel: each pixel ~ N(0, W W^T), pixels independent.
  model = tff.FlowModel([tff.layers.InvertibleConv1x1(lu=lu, seed=5)], [2, 2, 3])
  _perturb(model, scale=0.3)
  weight = model.bijector.bijectors[0].matrix().numpy().astype(np.float64)
  x = np.random.default_rng(2).normal(size=[4, 2, 2, 3]).astype("float32")
  normal = scipy.stats.multivariate_normal(np.zeros(3), weight @ weight.T)
  expected = normal.logpdf(x.reshape(-1, 3).astype(np.float64)).reshape(4, 4).sum(-1)
  np.testing.assert_allclose(model.log_prob(x).numpy(), expected, rtol=1e-5, atol=1e-4)


def test_custom_base_distribution():
  # Base N(1, 2^2) per entry through ActNorm(loc, s): data ~ N(loc + e^s, (2 e^s)^2).
  base = tfd.Sample(tfd.Normal(np.float32(1.0), np.float32(2.0)), [2])
  model = tff.FlowModel([tff.layers.ActNorm(data_init=False)], [2], base_distribution=base)
  loc, log_scale = np.array([0.5, -1.0]), np.array([0.2, -0.3])
  _set_act_norm(model.flow_layers[0], loc, log_scale)
  x = np.random.default_rng(8).normal(size=[4, 2]).astype("float32")
  expected = _normal_log_pdf(x, loc + np.exp(log_scale), 2 * np.exp(log_scale)).sum(-1)
  np.testing.assert_allclose(model.log_prob(x).numpy(), expected, rtol=1e-5)
  assert model.sample(3, seed=tf.constant([0, 0])).shape == [3, 2]
  with pytest.raises(ValueError, match="temperature needs the default"):
    model.sample(3, temperature=0.5)


def test_rows_are_independent_and_a_bad_row_stays_local():
  model = _coupling_flow()
  _perturb(model)
  x = np.random.default_rng(3).normal(size=[5, 2]).astype("float32")
  full = model.log_prob(x).numpy()
  single = np.concatenate([model.log_prob(x[i:i + 1]).numpy() for i in range(5)])
  np.testing.assert_allclose(full, single, rtol=1e-6, atol=1e-6)
  bad = x.copy()
  bad[2] = np.nan
  with_bad = model.log_prob(bad).numpy()
  assert np.isnan(with_bad[2])
  np.testing.assert_array_equal(np.delete(with_bad, 2), np.delete(full, 2))


# --- sampling ----------------------------------------------------------------------


@pytest.mark.parametrize("event_shape", [[3], [4, 4, 2]], ids=["vector", "image"])
@pytest.mark.parametrize("n", [1, 7])
def test_sample_shape(event_shape, n):
  layers = [tff.layers.ActNorm()]
  if len(event_shape) == 3:
    layers = [tff.layers.Squeeze(), tff.layers.ActNorm()]
  model = tff.FlowModel(layers, event_shape)
  samples = model.sample(n, seed=tf.constant([1, 2]))
  assert samples.shape == [n, *event_shape]
  assert np.all(np.isfinite(samples.numpy()))


@pytest.mark.parametrize("seeds", [(7, 8), ([1, 2], [1, 3])], ids=["int", "stateless"])
def test_same_seed_same_samples_different_seed_different(seeds):
  model = _coupling_flow()
  _perturb(model)
  first, other = seeds
  a = model.sample(16, seed=first).numpy()
  b = model.sample(16, seed=first).numpy()
  c = model.sample(16, seed=other).numpy()
  np.testing.assert_array_equal(a, b)
  assert np.abs(a - c).min() > 0


@pytest.mark.parametrize("seed", [[1, 2, 3], [1], 1.5, "abc", True, [1.0, 2.0], 2**31, -1])
def test_a_seed_that_is_not_one_int_or_two_is_an_error(seed):
  # [1, 2, 3] drew the samples of [1, 2]; 1.5 and "abc" were TypeErrors from TensorFlow.
  model = _coupling_flow()
  with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\*\*31\) or a \[2\]"):
    model.sample(3, seed=seed)


def test_samples_follow_the_model_distribution():
  # Sampling (forward) must invert density evaluation (inverse): samples of the ActNorm
  # flow N(loc, e^{2s}) have that mean and standard deviation. With n = 20000 the
  # standard errors are sd / 141 (mean) and sd / 200 (sd); 5 of them is the tolerance.
  loc, log_scale = np.array([1.0, -3.0]), np.array([0.5, -1.0])
  model = tff.FlowModel([tff.layers.ActNorm(data_init=False)], [2])
  _set_act_norm(model.flow_layers[0], loc, log_scale)
  samples = model.sample(20000, seed=tf.constant([4, 5])).numpy().astype(np.float64)
  scale = np.exp(log_scale)
  np.testing.assert_array_less(np.abs(samples.mean(0) - loc), 5 * scale / math.sqrt(20000))
  np.testing.assert_array_less(np.abs(samples.std(0) - scale),
                               5 * scale / math.sqrt(2 * 20000))


def test_temperature_scales_the_base():
  model = tff.FlowModel([tff.layers.ActNorm(data_init=False)], [2])
  _set_act_norm(model.flow_layers[0], np.array([1.0, 2.0]), np.zeros(2))
  seed = tf.constant([3, 4])
  full = model.sample(5, seed=seed).numpy()
  cold = model.sample(5, seed=seed, temperature=0.5).numpy()
  np.testing.assert_allclose(cold - [1.0, 2.0], 0.5 * (full - [1.0, 2.0]), rtol=1e-5,
                             atol=1e-6)
  with pytest.raises(ValueError, match="temperature must be positive"):
    model.sample(5, temperature=0.0)


def test_conditional_sample_shapes_per_context_row():
  # sample(n, context=rows) draws n * m base points and maps sample i of set j with
  # context row j: compare with the bijector applied to the same base draws.
  model = tff.FlowModel([tff.layers.AffineCoupling(hidden_units=(8,), conditional=True)],
                        [2], context_shape=[3])
  _perturb(model, scale=0.5)
  seed = tf.constant([1, 1])

  def forward(z, row):
    context = tf.constant(np.repeat(row[None], len(z), 0))
    return model.bijector.forward(
        tf.constant(z), **conditioning.conditional_kwargs(model.bijector, context)).numpy()

  row = np.array([1.0, -2.0, 0.5], "float32")
  one = model.sample(4, seed=seed, context=row).numpy()
  assert one.shape == (4, 2)
  z = model.base_distribution.sample(4, seed=seed).numpy()
  np.testing.assert_allclose(one, forward(z, row), rtol=1e-5, atol=1e-5)

  rows = np.array([[1.0, 0.0, 0.0], [0.0, 3.0, -1.0]], "float32")
  several = model.sample(4, seed=seed, context=rows).numpy()
  assert several.shape == (4, 2, 2)
  z = model.base_distribution.sample(8, seed=seed).numpy().reshape(4, 2, 2)
  for j in range(2):
    np.testing.assert_allclose(several[:, j], forward(z[:, j], rows[j]), rtol=1e-5,
                               atol=1e-5)
  # The context matters, so the row check above could tell the rows apart.
  assert np.abs(forward(z[:, 0], rows[0]) - forward(z[:, 0], rows[1])).max() > 1e-2


@pytest.mark.parametrize("autoregressive", [False, True])
def test_context_of_the_wrong_shape_is_a_clear_error(autoregressive):
  # Coupling and autoregressive models reject the same contexts, before any net runs.
  model = tff.models.NeuralSplineFlow(3, num_layers=1, hidden_units=(4,), context_dims=2,
                                      autoregressive=autoregressive)
  x = np.zeros([3, 3], "float32")
  with pytest.raises(ValueError, match=r"context rows must have shape context_shape=\[2\]"):
    model.log_prob(x, np.zeros([3, 5], "float32"))
  with pytest.raises(ValueError, match="one context row per row of x"):
    model.log_prob(x, np.zeros([1, 2], "float32"))
  with pytest.raises(ValueError, match="one context row per row of x"):
    model.log_prob(x, np.zeros([2], "float32"))
  with pytest.raises(ValueError, match=r"context rows must have shape context_shape=\[2\]"):
    model.sample(2, context=np.zeros([4], "float32"))
  assert model.log_prob(x, np.zeros([3, 2], "float32")).shape == (3,)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_predict_takes_a_conditional_flows_context_as_fit_and_evaluate_do(jit_compile):
  # fit(x, c) and evaluate(x, c) read c as the context; predict((x, c)) stacked x with c
  # (a TensorFlow Pack error), and a dataset of (x, c) lost c.
  model = tff.models.NeuralSplineFlow(2, num_layers=2, hidden_units=(4,), context_dims=1)
  model.compile(jit_compile=jit_compile)
  _perturb(model, scale=0.5)
  x = np.random.default_rng(0).normal(size=[10, 2]).astype("float32")
  c = np.random.default_rng(1).normal(size=[10, 1]).astype("float32")
  expected = model.log_prob(x, c).numpy()
  assert np.ptp(expected - model.log_prob(x, -c).numpy()) > 1e-3  # c matters
  batches = tf.data.Dataset.from_tensor_slices((x, c)).batch(4)
  for data in ((x, c), [x, c], batches):
    np.testing.assert_allclose(model.predict(data, batch_size=4, verbose=0), expected,
                               rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="pass context="):
    model.predict(x, verbose=0)


def test_fit_and_evaluate_take_the_context_in_one_structure_as_predict_does():
  # fit((x, c)) and evaluate((x, c)) stacked x with c: a TensorFlow Pack error.
  model = tff.models.NeuralSplineFlow(2, num_layers=2, hidden_units=(4,), context_dims=1)
  model.compile(keras.optimizers.SGD(0.0))
  _perturb(model, scale=0.5)
  x = np.random.default_rng(0).normal(size=[12, 2]).astype("float32")
  c = np.random.default_rng(1).normal(size=[12, 1]).astype("float32")
  model.fit(x, c, batch_size=12, verbose=0)  # ActNorm's data initialisation, then SGD(0)
  expected = -model.log_prob(x, c).numpy().mean()
  for data in ((x, c), [x, c]):
    np.testing.assert_allclose(model.evaluate(data, batch_size=12, verbose=0)[0], expected,
                               rtol=1e-5)
    history = model.fit(data, batch_size=12, shuffle=False, verbose=0).history
    np.testing.assert_allclose(history["loss"][0], expected, rtol=1e-5)
    np.testing.assert_allclose(model.test_on_batch(data), expected, rtol=1e-5)
    np.testing.assert_allclose(model.train_on_batch(data), expected, rtol=1e-5)
  with pytest.raises(ValueError, match="sample_weight is not supported"):
    model.test_on_batch(x, c, sample_weight=np.ones([12], "float32"))


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
def test_sample_takes_a_context_whose_row_count_is_known_only_at_run_time(jit_compile):
  # Keras' predict traces with a batch of None: sample(context=...) failed in int(None).
  model = tff.models.NeuralSplineFlow(2, num_layers=2, hidden_units=(4,), context_dims=1)
  _perturb(model, scale=0.5)
  context = np.array([[0.5], [-0.5], [1.5]], "float32")
  sample = tf.function(lambda c: model.sample(4, seed=7, context=c), jit_compile=jit_compile,
                       input_signature=[tf.TensorSpec([None, 1], tf.float32)])
  draws = sample(context).numpy()
  assert draws.shape == (4, 3, 2)
  np.testing.assert_allclose(
      draws, tf.function(lambda: model.sample(4, seed=7, context=context),
                         jit_compile=jit_compile)().numpy(), rtol=1e-5, atol=1e-5)


def test_context_follows_the_float64_policy_and_bad_counts_are_errors():
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy("float64")
  try:
    model = tff.models.NeuralSplineFlow(3, num_layers=1, hidden_units=(4,),
                                        context_dims=2, autoregressive=True)
    assert model.context_dtype == "float64"
    context = np.random.default_rng(0).normal(size=[4, 2])
    x = np.random.default_rng(1).normal(size=[4, 3])
    _perturb(model, scale=0.5)
    # The float64 context reaches the nets unrounded: the model's log_prob equals the
    # distribution's with the float64 context exactly.
    bijector = model.bijector
    expected = model.distribution.log_prob(
        tf.constant(x), bijector_kwargs=conditioning.conditional_kwargs(
            bijector, tf.constant(context)))
    np.testing.assert_allclose(model.log_prob(x, context).numpy(), expected.numpy(),
                               rtol=1e-13)
  finally:
    keras.config.set_dtype_policy(previous)
  assert tff.models.NeuralSplineFlow(3, num_layers=1, context_dims=2).context_dtype == (
      "float32")
  with pytest.raises(ValueError, match="num_bins must be an integer"):
    tff.models.NeuralSplineFlow(3, num_layers=1, num_bins=2.5)
  with pytest.raises(ValueError, match="context_dims must be a positive int"):
    tff.models.NeuralSplineFlow(3, num_layers=1, context_dims=0)


def test_conditional_distribution_routes_context_inside_tf_function():
  # FlowModel.distribution's documented use for conditional flows,
  # `distribution.log_prob(x, bijector_kwargs=conditional_kwargs(model.bijector, c))`,
  # must give the same numbers in a tf.function (export traces it) as eagerly:
  # N(mu_c, sigma_c^2) per entry, c the row's label.
  model = tff.FlowModel([tff.layers.GaussianPrior(num_classes=3)], [2], context_shape=[],
                        context_dtype="int32")
  table = np.array([[0.0, 1.0, 0.0, 0.5], [2.0, -1.0, -0.5, 0.0], [0.0, 0.0, 1.0, 1.0]],
                   "float32")
  model.flow_layers[0].table.assign(table)
  x = np.random.default_rng(9).normal(size=[3, 2]).astype("float32")
  labels = np.array([2, 0, 1], "int32")
  expected = _normal_log_pdf(x, table[labels, :2], np.exp(table[labels, 2:])).sum(-1)

  def log_prob(x, c):
    kwargs = conditioning.conditional_kwargs(model.bijector, c)
    return model.distribution.log_prob(x, bijector_kwargs=kwargs)

  np.testing.assert_allclose(model.log_prob(x, context=labels).numpy(), expected, rtol=1e-5)
  np.testing.assert_allclose(log_prob(tf.constant(x), tf.constant(labels)).numpy(),
                             expected, rtol=1e-5)
  np.testing.assert_allclose(
      tf.function(log_prob)(tf.constant(x), tf.constant(labels)).numpy(), expected,
      rtol=1e-5)


# --- XLA ---------------------------------------------------------------------------


def test_xla_log_prob_and_evaluate_equal_eager():
  model = _coupling_flow(hidden=(16,))
  _perturb(model)
  x = np.random.default_rng(4).normal(size=[32, 2]).astype("float32")
  eager = model.log_prob(x).numpy()
  xla = tf.function(model.log_prob, jit_compile=True)(tf.constant(x)).numpy()
  np.testing.assert_allclose(xla, eager, rtol=1e-5, atol=1e-5)
  model.compile(optimizer="adam", jit_compile=True)
  nll = model.evaluate(x, batch_size=32, verbose=0, return_dict=True)["nll"]
  np.testing.assert_allclose(nll, -eager.mean(), rtol=1e-5)


def test_xla_training_step_equals_eager_training_step():
  # Same weights, same batch, same optimizer: one XLA step and one eager step give the
  # same logged NLL (including ActNorm's data-dependent initialisation) and weights.
  x = np.random.default_rng(5).normal(size=[64, 2]).astype("float32") * [2.0, 0.5] + 1.0
  models = []
  for options in ({"jit_compile": True}, {"run_eagerly": True}):
    keras.utils.set_random_seed(0)
    model = _coupling_flow(hidden=(16,))
    _perturb(model)
    model.compile(optimizer=keras.optimizers.SGD(1e-2), **options)
    history = model.fit(x, batch_size=64, epochs=1, shuffle=False, verbose=0).history
    models.append((model, history["nll"][0]))
  (xla, xla_nll), (eager, eager_nll) = models
  np.testing.assert_allclose(xla_nll, eager_nll, rtol=1e-5)
  for a, b in zip(xla.weights, eager.weights):
    np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b),
                               rtol=1e-5, atol=1e-5)


# --- training ----------------------------------------------------------------------

_MEAN = np.array([2.0, -1.0])
_STD = np.array([1.5, 0.5])
_RHO = 0.8
_COV = np.array([[_STD[0] ** 2, _RHO * _STD[0] * _STD[1]],
                 [_RHO * _STD[0] * _STD[1], _STD[1] ** 2]])


def _gaussian_data(n, seed):
  rng = np.random.default_rng(seed)
  return (_MEAN + rng.normal(size=(n, 2)) @ np.linalg.cholesky(_COV).T).astype("float32")


@pytest.mark.parametrize("source", ["numpy", "dataset"])
def test_fit_learns_a_correlated_gaussian(source):
  # The data are N(mean, cov) with correlation 0.8. ActNorm + two affine couplings can
  # represent this exactly (x2 | x1 is Gaussian with a mean linear in x1), so the
  # held-out NLL must approach the true density's NLL on the same points. Those are
  # compared point for point, which removes the sampling noise of the test set; the
  # 0.03-nat margin is for the optimisation and the ReLU fit of a linear function
  # (observed gap: ~0.005). Against the entropy H = 0.5 log det(2 pi e cov) the test
  # set adds sampling noise: sd(-log p) = sqrt(D / 2) = 1, so 4 standard errors at
  # n = 2048 is 0.09. An ActNorm alone (independent Gaussian) cannot get below
  # H - 0.5 log(1 - rho^2) = H + 0.51: the couplings must learn the correlation.
  x_train, x_test = _gaussian_data(2048, 0), _gaussian_data(2048, 1)
  entropy = 0.5 * math.log(np.linalg.det(2 * math.pi * math.e * _COV))
  true_nll = -scipy.stats.multivariate_normal(_MEAN, _COV).logpdf(x_test).mean()
  independent_nll = entropy - 0.5 * math.log(1 - _RHO ** 2)

  model = _coupling_flow(hidden=(16, 16))
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  initial = -model.log_prob(x_test).numpy().mean()
  if source == "numpy":
    history = model.fit(x_train, batch_size=256, epochs=15, verbose=0).history
  else:
    dataset = tf.data.Dataset.from_tensor_slices(x_train).shuffle(2048, seed=0).batch(256)
    history = model.fit(dataset, epochs=15, shuffle=False, verbose=0).history
  final = -model.log_prob(x_test).numpy().mean()

  assert set(history) == {"loss", "loss_max", "nll"}
  assert history["nll"][-1] < history["nll"][0]
  assert final < initial - 3.0
  assert final < independent_nll - 0.4
  assert abs(final - true_nll) < 0.03
  assert abs(final - entropy) < 0.03 + 4 / math.sqrt(2048)
  samples = model.sample(512, seed=tf.constant([0, 1])).numpy()
  assert np.all(np.isfinite(samples))


# --- logged metrics ----------------------------------------------------------------


def test_image_models_log_bits_per_dim():
  model = tff.FlowModel([tff.layers.Squeeze(), tff.layers.ActNorm()], [4, 4, 2])
  x = np.random.default_rng(6).normal(size=[8, 4, 4, 2]).astype("float32")
  model.compile(optimizer="adam")
  history = model.fit(x, batch_size=8, epochs=1, verbose=0).history
  assert set(history) == {"loss", "loss_max", "nll", "bits_per_dim"}
  np.testing.assert_allclose(history["bits_per_dim"][0],
                             history["nll"][0] / (32 * math.log(2.0)), rtol=1e-6)
  results = model.evaluate(x, batch_size=8, verbose=0, return_dict=True)
  nll = -model.log_prob(x).numpy().mean()
  np.testing.assert_allclose(results["nll"], nll, rtol=1e-5)
  np.testing.assert_allclose(results["bits_per_dim"], nll / (32 * math.log(2.0)), rtol=1e-5)


def test_evaluate_reports_the_mean_nll_over_all_examples():
  # 10 examples in batches of 4, 4, 2: the logged nll is nats per example over the
  # data set, so the short last batch must count for 2 examples, not for 4.
  model = _coupling_flow()
  _perturb(model)
  x = np.random.default_rng(7).normal(size=[10, 2]).astype("float32") * 3.0
  model.compile(optimizer="adam")
  results = model.evaluate(x, batch_size=4, verbose=0, return_dict=True)
  assert set(results) == {"loss", "nll"}
  np.testing.assert_allclose(results["nll"], -model.log_prob(x).numpy().mean(), rtol=1e-5)


# --- errors ------------------------------------------------------------------------


def test_context_passed_to_an_unconditional_model_is_an_error():
  model = _coupling_flow()
  x = np.zeros([2, 2], "float32")
  with pytest.raises(ValueError, match="has no context_shape, so it takes no context"):
    model.log_prob(x, context=np.zeros([2, 1], "float32"))
  with pytest.raises(ValueError, match="takes no context"):
    model.sample(2, context=np.zeros([1], "float32"))
  model.compile(optimizer="adam")
  with pytest.raises(ValueError, match="takes no context"):
    model.fit(x, np.zeros([2, 1], "float32"), verbose=0)


def test_missing_context_for_a_conditional_model_is_an_error():
  model = tff.FlowModel([tff.layers.GaussianPrior(num_classes=3)], [2], context_shape=[],
                        context_dtype="int32")
  with pytest.raises(ValueError, match=r"conditional \(context_shape=\[\]\): pass context="):
    model.log_prob(np.zeros([2, 2], "float32"))
  with pytest.raises(ValueError, match="pass context="):
    model.sample(2)


def test_layers_of_another_dtype_than_the_model_are_an_error():
  # They built, then failed on first use with a TensorFlow dtype error naming neither.
  layers = tff.layers
  cases = [({"dtype": "float64"}, {"dtype": "float64"}, {}, "float32", "float64"),
           ({}, {}, {"dtype": "float64"}, "float64", "float32"),
           ({}, {"dtype": "float64"}, {}, "float32", "float64")]
  for first, second, model, expected, got in cases:
    with pytest.raises(ValueError, match=f"computes in {expected}, but its flow layer "
                       f"'.*' computes in {got}: .* Pass the same dtype="):
      tff.FlowModel([layers.ActNorm(**first),
                     layers.AffineCoupling(hidden_units=(4,), **second)], [2], **model)
  double = tff.FlowModel([layers.ActNorm(dtype="float64"),
                          layers.AffineCoupling(hidden_units=(4,), dtype="float64")], [2],
                         dtype="float64")
  assert double.log_prob(np.zeros([3, 2])).dtype == tf.float64


def test_empty_layer_list_is_an_error():
  with pytest.raises(ValueError, match="at least one flow layer"):
    tff.FlowModel([], [2])


def test_non_flow_layer_is_an_error():
  with pytest.raises(TypeError, match="FlowModel takes tfp_flows flow layers; got <Dense"):
    tff.FlowModel([tff.layers.ActNorm(), keras.layers.Dense(2)], [2])
  with pytest.raises(TypeError, match="takes tfp_flows FlowLayers"):
    tff.layers.FactorOut([keras.layers.Dense(2)])


def test_bad_event_shape_is_an_error():
  with pytest.raises(ValueError, match=r"event_shape must be positive sizes; got \[0, 2\]"):
    tff.FlowModel([tff.layers.ActNorm()], [0, 2])


if __name__ == "__main__":
  # `main` of this file's py_test: under `bazel test` run the tests, not just the import.
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
