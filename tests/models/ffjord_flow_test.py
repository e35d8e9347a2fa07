"""FFJORDFlow: maximum likelihood and flow matching fit a Gaussian; nfe, XLA, saving."""

import keras
import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

import tfp_flows as tff
from tests.testing import model_checks

MEAN = np.array([1.5, -1.0])
COV = np.array([[1.0, 0.6], [0.6, 0.8]])


def _gaussian(n, seed):
  return np.random.default_rng(seed).multivariate_normal(MEAN, COV, size=n).astype(
      "float32")


@pytest.fixture(autouse=True)
def _seed():
  keras.utils.set_random_seed(0)


def test_maximum_likelihood_fit_under_xla_logs_nfe_and_learns_a_gaussian():
  x_train, x_test = _gaussian(1024, 0), _gaussian(512, 1)
  model = tff.models.FFJORDFlow([2], hidden_units=(16, 16), rtol=1e-3, atol=1e-3)
  model.compile(optimizer=keras.optimizers.Adam(2e-2), jit_compile=True)
  history = model.fit(x_train, epochs=8, batch_size=256, verbose=0).history
  # dopri5 spends 2 evaluations on the first step size and 6 on each step.
  assert all(n >= 8 for n in history["nfe"]), history["nfe"]
  nll = -model.log_prob(x_test).numpy().mean()
  true_nll = -scipy.stats.multivariate_normal(MEAN, COV).logpdf(x_test).mean()
  # ActNorm alone fits the marginals (a diagonal Gaussian, 0.44 nats worse here); the
  # CNF must learn the correlation. 0.15 nats is ~10 standard errors of the test mean.
  diagonal_nll = -scipy.stats.multivariate_normal(MEAN, np.diag(np.diag(COV))).logpdf(
      x_test).mean()
  assert nll < true_nll + 0.15 < diagonal_nll, (nll, true_nll, diagonal_nll)


def test_adjoint_nfe_is_reported_once_the_gradient_is_built_under_xla():
  model = tff.FlowModel([tff.layers.FFJORD(hidden_units=(8, 8), rtol=1e-4, atol=1e-4)],
                        event_shape=[2])
  layer = model.flow_layers[0]
  counter = tf.Variable(0, trainable=False)
  field = layer.net.call_with_tangents

  def counted(*args):
    with tf.control_dependencies([counter.assign_add(1)]):
      return field(*args)

  layer.net.call_with_tangents = counted

  @tf.function(jit_compile=True)
  def step(x):
    with tf.GradientTape() as tape:
      loss = -tf.reduce_mean(model(x, training=True))
    # Before the gradient only the forward solve's count exists.
    assert sorted(layer.last_statistics) == ["nfe"]
    tape.gradient(loss, model.trainable_variables)
    after = layer.last_statistics
    return after["nfe"], after["adjoint_nfe"]

  nfe, adjoint_nfe = step(tf.constant(_gaussian(16, 2)))
  assert counter.numpy() == nfe.numpy() + adjoint_nfe.numpy()
  assert adjoint_nfe.numpy() >= 7   # 1 + 6 per step


def test_flow_matching_learns_a_gaussian_without_solving_and_log_prob_is_exact():
  x_train, x_test = _gaussian(2048, 2), _gaussian(512, 3)
  model = tff.models.FFJORDFlow([2], hidden_units=(16, 16), actnorm=False,
                                training="flow_matching", rtol=1e-4, atol=1e-4)
  model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True)
  history = model.fit(x_train, epochs=15, batch_size=256, verbose=0).history
  assert set(history) == {"loss", "loss_max", "flow_matching_loss"}
  assert history["flow_matching_loss"][-1] < history["flow_matching_loss"][0]
  nll = -model.log_prob(x_test).numpy().mean()
  true_nll = -scipy.stats.multivariate_normal(MEAN, COV).logpdf(x_test).mean()
  assert nll < true_nll + 0.15, (nll, true_nll)
  # Sampling integrates the learned field from the base: the data's moments.
  samples = model.sample(2000, seed=4).numpy()
  np.testing.assert_allclose(samples.mean(0), MEAN, atol=0.15)
  # evaluate() reports the exact likelihood of the field trained by regression.
  np.testing.assert_allclose(model.evaluate(x_test, verbose=0, return_dict=True)["nll"],
                             nll, rtol=1e-4)


def test_flow_matching_does_not_train_the_layers_before_the_field():
  # The regression loss falls if ActNorm shrinks the data; the ActNorm before the
  # field must keep its data initialisation while the field trains.
  model = tff.models.FFJORDFlow([2], hidden_units=(8,), training="flow_matching")
  actnorm, field = model.flow_layers
  snapshots = {}

  class AfterFirstBatch(keras.callbacks.Callback):

    def on_train_batch_end(self, batch, logs=None):
      if "actnorm" not in snapshots:
        snapshots["actnorm"] = [w.numpy().copy() for w in actnorm.trainable_weights]
        snapshots["field"] = [w.numpy().copy() for w in field.trainable_weights]

  model.compile(optimizer=keras.optimizers.Adam(2e-2))
  model.fit(_gaussian(1024, 8), epochs=4, batch_size=128, verbose=0,
            callbacks=[AfterFirstBatch()])
  for before, weight in zip(snapshots["actnorm"], actnorm.trainable_weights):
    np.testing.assert_array_equal(weight.numpy(), before)
  assert max(np.abs(w.numpy() - b).max()
             for w, b in zip(field.trainable_weights, snapshots["field"])) > 1e-2


def test_evaluation_hutchinson_log_prob_is_the_same_for_a_point_in_any_batch():
  # Above exact_max_dims evaluation uses one probe per point keyed by its values.
  layer = tff.layers.FFJORD(hidden_units=(8,), exact_max_dims=0, solver="rk4",
                            num_steps=4, gradient="backprop")
  model = tff.FlowModel([layer], [3])
  for weight in layer.net.trainable_weights:
    weight.assign(0.3 * np.random.default_rng(2).normal(size=weight.shape))
  assert layer.trace_mode(False) == "hutchinson (keyed probe)"
  model_checks.assert_log_prob_is_batch_independent(
      model, np.random.default_rng(3).normal(size=[6, 3]).astype("float32"))


def test_flow_matching_with_optimal_transport_pairs_rows_of_the_batch():
  model = tff.models.FFJORDFlow([2], hidden_units=(8,), actnorm=False,
                                training="flow_matching", optimal_transport=True)
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  history = model.fit(_gaussian(512, 5), epochs=2, batch_size=128, verbose=0).history
  assert np.all(np.isfinite(history["flow_matching_loss"]))


def test_regularisers_are_keras_losses_and_shorten_nothing_at_zero_weight():
  x = tf.constant(_gaussian(64, 6))
  model = tff.models.FFJORDFlow([2], hidden_units=(8,), kinetic_weight=0.5,
                                jacobian_weight=0.25, rtol=1e-4, atol=1e-4)
  layer = model.flow_layers[-1]
  for weight in layer.net.trainable_weights:  # a non-zero field
    weight.assign(0.3 * np.random.default_rng(0).normal(size=weight.shape))
  model(x, training=True)
  assert len(model.losses) == 2
  result = layer.make_bijector(training=True, seed=tf.constant([1, 1])).solve(
      model.flow_layers[0](x, training=False)[0], "inverse", regularize=True)
  assert float(model.losses[0]) > 0 and float(model.losses[1]) > 0
  np.testing.assert_allclose(float(model.losses[0]),
                             0.5 * result.kinetic_energy.numpy().mean(), rtol=1e-3)
  model(x, training=False)
  assert not model.losses


def test_learned_end_time_trains_and_survives_keras_round_trip(tmp_path):
  x = _gaussian(256, 7)
  model = tff.models.FFJORDFlow([2], hidden_units=(8,), learn_end_time=True,
                                trace="exact", rtol=1e-3, atol=1e-3)
  layer = model.flow_layers[-1]
  for weight in layer.net.trainable_weights:
    weight.assign(0.3 * np.random.default_rng(1).normal(size=weight.shape))
  before = float(layer.sqrt_end_time.numpy())
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  model.fit(x, epochs=1, batch_size=128, verbose=0)
  assert float(layer.sqrt_end_time.numpy()) != before
  path = str(tmp_path / "ffjord.keras")
  model.save(path)
  loaded = keras.models.load_model(path)
  np.testing.assert_allclose(loaded.log_prob(x[:16]).numpy(),
                             model.log_prob(x[:16]).numpy(), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(loaded.sample(8, seed=3).numpy(),
                             model.sample(8, seed=3).numpy(), rtol=1e-5, atol=1e-5)


def test_image_flow_builds_conv_fields_and_evaluates():
  model = tff.models.FFJORDFlow([4, 4, 1], hidden_units=(4,), num_blocks=2,
                                solver="rk4", num_steps=2, gradient="backprop")
  assert [type(l).__name__ for l in model.flow_layers] == ["ActNorm", "FFJORD"] * 2
  assert isinstance(model.flow_layers[1].net, tff.nets.TimeConditionedConvNet)
  x = np.random.default_rng(0).normal(size=[3, 4, 4, 1]).astype("float32")
  # At initialisation every field is zero: the flow is ActNorm's identity start.
  np.testing.assert_allclose(model.log_prob(x).numpy(),
                             scipy.stats.norm.logpdf(x).reshape(3, -1).sum(1), rtol=1e-5)
  # 16 entries: the exact trace in evaluation, the Hutchinson one in training.
  assert model.flow_layers[1].trace_mode(False) == "exact"
  assert model.flow_layers[1].trace_mode(True) == "hutchinson"


def test_image_flow_trains_under_xla_and_round_trips_with_a_nonzero_field():
  # The conv field with dopri5 and the adjoint: fit under XLA, then evaluation under
  # XLA equals graph mode, and sampling inverts log_prob's direction to the solver's
  # tolerance.
  model = tff.models.FFJORDFlow([4, 4, 1], hidden_units=(4,), rtol=1e-5, atol=1e-5)
  field = model.flow_layers[-1]
  for weight in field.net.trainable_weights:
    weight.assign(0.3 * np.random.default_rng(5).normal(size=weight.shape))
  x = np.random.default_rng(6).normal(size=[32, 4, 4, 1]).astype("float32")
  model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
  history = model.fit(x, epochs=1, batch_size=16, verbose=0).history
  assert np.isfinite(history["nll"][0]) and history["nfe"][0] >= 8
  graph = tf.function(model.log_prob)(x[:4]).numpy()
  xla = tf.function(model.log_prob, jit_compile=True)(x[:4]).numpy()
  assert np.all(np.isfinite(graph))
  np.testing.assert_allclose(xla, graph, rtol=1e-4, atol=1e-4)
  bijector = model.bijector
  # A new tensor, so TFP's bijector cache cannot hand back x: forward really solves.
  z = tf.constant(bijector.inverse(tf.constant(x[:4])).numpy())
  # Measured 4.8e-7; dopri5 at rtol = atol = 1e-5 controls each direction's local error.
  np.testing.assert_allclose(bijector.forward(z).numpy(), x[:4], atol=1e-4)


def test_bad_preset_arguments_are_clear_errors():
  with pytest.raises(ValueError, match="num_blocks=1"):
    tff.models.FFJORDFlow([2], num_blocks=2, training="flow_matching")
  with pytest.raises(ValueError, match="training"):
    tff.models.FFJORDFlow([2], training="score_matching")
  with pytest.raises(ValueError, match="event_shape"):
    tff.models.FFJORDFlow([2, 2])
  with pytest.raises(ValueError, match="max_num_steps"):
    tff.models.FFJORDFlow([2], max_num_steps=0)


def test_concat_field_equals_stock_tfp_ffjord_with_the_same_net_and_round_trips(tmp_path):
  # time_conditioning="concat" is the MLP on [z, t] of TFP's FFJORD examples: with the
  # same weights, the exact log-density under XLA equals stock tfb.FFJORD's (float64,
  # exact trace, both solved to 1e-10).
  tfp = pytest.importorskip("tensorflow_probability")
  model = tff.models.FFJORDFlow([2], hidden_units=(16, 16), activation="tanh",
                                time_conditioning="concat", actnorm=False, trace="exact",
                                rtol=1e-10, atol=1e-10)
  net = model.flow_layers[0].net
  rng = np.random.default_rng(11)
  for weight in net.weights:
    weight.assign(0.5 * rng.normal(size=weight.shape))
  kernels = [w.numpy().astype("float64") for w in net.weights if w.name == "kernel"]
  biases = [w.numpy().astype("float64") for w in net.weights if w.name == "bias"]

  def stock_field(t, x):
    h = tf.concat([x, tf.ones_like(x[:, :1]) * t], axis=1)
    for kernel, bias in zip(kernels[:-1], biases[:-1]):
      h = tf.tanh(h @ kernel + bias)
    return h @ kernels[-1] + biases[-1]

  solver = tfp.math.ode.DormandPrince(rtol=1e-10, atol=1e-10)
  stock = tfp.distributions.TransformedDistribution(
      tfp.distributions.MultivariateNormalDiag(tf.zeros(2, tf.float64)),
      tfp.bijectors.FFJORD(stock_field, ode_solve_fn=solver.solve,
                           trace_augmentation_fn=tfp.bijectors.ffjord.trace_jacobian_exact,
                           dtype=tf.float64))
  x = rng.normal(size=[8, 2]).astype("float32")
  ours = tf.function(model.log_prob, jit_compile=True)(x).numpy()
  expected = stock.log_prob(tf.constant(x, tf.float64)).numpy()
  assert np.abs(expected - scipy.stats.norm.logpdf(x).sum(1)).max() > 0.1
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
  path = str(tmp_path / "concat.keras")
  model.save(path)
  loaded = keras.models.load_model(path)
  assert loaded.flow_layers[0].time_conditioning == "concat"
  np.testing.assert_allclose(loaded.log_prob(x).numpy(), model.log_prob(x).numpy(),
                             rtol=1e-6, atol=1e-6)


def test_a_batch_of_one_takes_input_gradients_through_the_adjoint():
  # dopri5's loop broadcast a known batch of 1 to an unknown size, and tf.while_loop
  # refused the changed shape in the adjoint's backward solve (a batch of 2 kept its
  # size): a last batch of one row, a single point, a score.
  keras.utils.set_random_seed(0)
  model = tff.models.FFJORDFlow([2], hidden_units=(8, 8))
  x = tf.constant(np.random.default_rng(0).normal(size=(2, 2)), tf.float32)

  def score(points):
    with tf.GradientTape() as tape:
      tape.watch(points)
      total = tf.reduce_sum(model.distribution.log_prob(points))
    return tape.gradient(total, points).numpy()

  both = score(x)
  assert np.all(np.abs(both) > 1e-3)
  np.testing.assert_allclose(score(x[:1]), both[:1], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(score(x[1]), both[1], rtol=1e-4, atol=1e-5)


def test_num_steps_with_the_adaptive_solver_is_an_error_not_ignored():
  # dopri5 chooses its own steps: num_steps=5 was accepted and silently ignored.
  with pytest.raises(ValueError, match=r"num_steps=5 is for the fixed-step solvers"):
    tff.models.FFJORDFlow([2], hidden_units=(8,), num_steps=5)
  with pytest.raises(ValueError, match=r"num_steps=5 is for the fixed-step solvers"):
    tff.layers.FFJORD(hidden_units=(8,), solver="dopri5", num_steps=5)
  assert tff.models.FFJORDFlow([2], hidden_units=(8,), solver="rk4",
                               num_steps=5).flow_layers[-1].num_steps == 5
