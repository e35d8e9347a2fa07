"""tfp_flows.models.NeuralSplineFlow: structure, stock-TFP agreement, XLA, saving, conditioning."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfp_flows as tff
from tests.testing import flow_helpers

VARIANTS = {
    "coupling": {},
    "autoregressive": {"autoregressive": True},
    "coupling_permute": {"linear": "permute"},
}
SMALL = {"num_layers": 2, "num_bins": 4, "hidden_units": (16,)}


pytestmark = pytest.mark.usefixtures("keras_seed")


def test_layer_structure():
  kinds = lambda m: [type(l).__name__ for l in m.flow_layers]
  assert kinds(tff.models.NeuralSplineFlow(4, **SMALL)) == [
      "ActNorm", "InvertibleConv1x1", "SplineCoupling", "InvertibleConv1x1",
      "SplineCoupling"]
  assert kinds(tff.models.NeuralSplineFlow(
      4, autoregressive=True, linear="permute", actnorm=False, num_bits=5, **SMALL)) == [
          "Dequantize", "Permute", "SplineAutoregressive", "Permute",
          "SplineAutoregressive"]
  one = tff.models.NeuralSplineFlow(1, autoregressive=True, **SMALL)
  assert kinds(one) == ["ActNorm", "SplineAutoregressive", "SplineAutoregressive"]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_log_prob_is_the_stock_tfp_distribution_and_sampling_inverts(variant):
  model = tff.models.NeuralSplineFlow(5, **SMALL, **VARIANTS[variant])
  flow_helpers.perturb_weights(model, scale=0.2)
  x = np.random.default_rng(2).normal(size=[16, 5]).astype("float32")
  log_prob = model.log_prob(x).numpy()
  assert np.all(np.isfinite(log_prob))
  np.testing.assert_allclose(log_prob, flow_helpers.distribution_log_prob(model, x), rtol=1e-5,
                             atol=1e-4)
  z = model.bijector.inverse(x)
  np.testing.assert_allclose(model.bijector.forward(z).numpy(), x, atol=1e-4)
  samples = model.sample(32, seed=3).numpy()
  assert samples.shape == (32, 5) and np.all(np.isfinite(samples))
  np.testing.assert_array_equal(samples, model.sample(32, seed=3).numpy())


@pytest.mark.parametrize("linear", ["lu", "permute"])
@pytest.mark.parametrize("autoregressive", [False, True])
def test_every_coordinate_depends_on_every_other_after_four_blocks(linear, autoregressive):
  # Four alternating coupling blocks (or two autoregressive ones of opposite orders) make
  # every base coordinate depend on every data coordinate. With linear="permute" the
  # permutation must do the alternating: reversing the data and also the halves (or the
  # order) undid it, so coordinates passed through untouched (a unit row of the
  # Jacobian) and every MADE ran in one order (a triangular Jacobian); and with an odd
  # D a reversal alone keeps the middle coordinate in the moved half of every coupling,
  # so no other coordinate depends on it (a zero column).
  model = tff.models.NeuralSplineFlow(5, num_blocks=4, num_bins=4, hidden_units=(16,),
                                      linear=linear, autoregressive=autoregressive,
                                      actnorm=False, dtype="float64")
  flow_helpers.perturb_weights(model, scale=0.3)
  x = tf.constant(np.random.default_rng(3).uniform(-1, 1, size=[4, 5]))
  with tf.GradientTape() as tape:
    tape.watch(x)
    z = model.bijector.inverse(x)
  jacobian = tape.batch_jacobian(z, x).numpy()
  assert np.all(np.abs(jacobian) > 1e-9), np.round(jacobian[0], 3)


@pytest.mark.parametrize("variant", ["coupling", "autoregressive"])
def test_xla_log_prob_and_sampling_equal_eager(variant):
  model = tff.models.NeuralSplineFlow(4, **SMALL, **VARIANTS[variant])
  flow_helpers.perturb_weights(model, scale=0.2)
  x = tf.constant(np.random.default_rng(4).normal(size=[8, 4]), tf.float32)
  eager = model.log_prob(x).numpy()
  xla = tf.function(model.log_prob, jit_compile=True)(x).numpy()
  np.testing.assert_allclose(xla, eager, atol=1e-4, rtol=1e-5)
  z = tf.constant(np.random.default_rng(5).normal(size=[8, 4]), tf.float32)
  forward = lambda z: model.bijector.forward(z)
  np.testing.assert_allclose(tf.function(forward, jit_compile=True)(z).numpy(),
                             forward(z).numpy(), atol=1e-4)


@pytest.mark.parametrize("variant", ["coupling", "autoregressive"])
def test_keras_round_trip(variant, tmp_path):
  model = tff.models.NeuralSplineFlow(3, context_dims=2, **SMALL, **VARIANTS[variant])
  flow_helpers.perturb_weights(model, scale=0.2)
  x = np.random.default_rng(6).normal(size=[5, 3]).astype("float32")
  c = np.random.default_rng(7).normal(size=[5, 2]).astype("float32")
  path = str(tmp_path / "nsf.keras")
  model.save(path)
  loaded = keras.models.load_model(path)
  np.testing.assert_array_equal(loaded.log_prob(x, context=c).numpy(),
                                model.log_prob(x, context=c).numpy())
  np.testing.assert_array_equal(loaded.sample(4, seed=1, context=c[0]).numpy(),
                                model.sample(4, seed=1, context=c[0]).numpy())


def _conditional_gaussian(c):
  """x | c ~ N(mean(c), diag(scale(c))^2): the target of the conditional test."""
  mean = np.stack([2.0 * c, -c], -1)
  scale = np.stack([0.5 + 0.25 * c, 0.4 + 0.1 * c], -1)
  return mean, scale


@pytest.mark.parametrize("variant", ["coupling", "autoregressive"])
def test_conditional_flow_recovers_a_context_dependent_gaussian(variant):
  # Fit with (x, context) pairs. With 4000 samples per checked context, the standard
  # error of a sample mean is at most 0.75 / sqrt(4000) = 0.012 and of a sample std
  # about 0.008; the 0.05 tolerance (4 standard errors) leaves the rest for misfit
  # (measured: at most 0.02 in mean and std for both variants). The held-out NLL may
  # exceed the true conditional's by at most 0.05 nats: that excess estimates the
  # average KL divergence from the truth (measured 0.018-0.020).
  rng = np.random.default_rng(8)
  c = rng.uniform(-1, 1, size=[6000]).astype("float32")
  mean, scale = _conditional_gaussian(c)
  x = (mean + scale * rng.normal(size=[6000, 2])).astype("float32")
  model = tff.models.NeuralSplineFlow(2, num_layers=3, num_bins=6, hidden_units=(32, 32),
                                      context_dims=1, **VARIANTS[variant])
  # A decaying learning rate removes most of Adam's end-of-run noise from the fit.
  schedule = keras.optimizers.schedules.CosineDecay(3e-3, decay_steps=25 * 30)
  model.compile(optimizer=keras.optimizers.Adam(schedule))
  model.fit(x, c[:, None], epochs=25, batch_size=200, verbose=0)

  c_test = rng.uniform(-1, 1, size=[2000]).astype("float32")
  mean, scale = _conditional_gaussian(c_test)
  x_test = (mean + scale * rng.normal(size=[2000, 2])).astype("float32")
  true_log_prob = np.sum(-0.5 * ((x_test - mean) / scale) ** 2 - np.log(scale)
                         - 0.5 * math.log(2 * math.pi), -1)
  excess = np.mean(true_log_prob - model.log_prob(x_test, context=c_test[:, None]))
  assert excess < 0.05, excess

  contexts = np.array([[-0.5], [0.5]], "float32")
  samples = model.sample(4000, seed=9, context=contexts).numpy()
  assert samples.shape == (4000, 2, 2)
  for row, value in enumerate(contexts[:, 0]):
    mean, scale = _conditional_gaussian(np.float32(value))
    np.testing.assert_allclose(samples[:, row].mean(0), mean, atol=0.05)
    np.testing.assert_allclose(samples[:, row].std(0), scale, atol=0.05)


def test_argument_errors():
  with pytest.raises(ValueError, match="event_dims >= 2"):
    tff.models.NeuralSplineFlow(1)
  with pytest.raises(ValueError, match="linear must be one of"):
    tff.models.NeuralSplineFlow(4, linear="dense")
  with pytest.raises(ValueError, match="must be positive"):
    tff.models.NeuralSplineFlow(4, num_layers=0)


def test_conditioner_layout_dense_loads_weights_saved_before_the_stacked_layout(tmp_path):
  # A weights-only file of that time: the same preset whose couplings hold Keras Dense
  # kernels and biases (what conditioner_layout="dense" builds).
  old = tff.models.NeuralSplineFlow(event_shape=[4], num_blocks=2, hidden_units=(8,),
                                    linear="permute", actnorm=False,
                                    conditioner_layout="dense")
  flow_helpers.perturb_weights(old, scale=0.3)
  path = str(tmp_path / "old.weights.h5")
  old.save_weights(path)
  x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
  expected = old.log_prob(x).numpy()
  with pytest.raises(ValueError, match="conditioner"):
    tff.models.NeuralSplineFlow(event_shape=[4], num_blocks=2, hidden_units=(8,),
                                linear="permute", actnorm=False).load_weights(path)
  new = tff.models.NeuralSplineFlow(event_shape=[4], num_blocks=2, hidden_units=(8,),
                                    linear="permute", actnorm=False,
                                    conditioner_layout="dense")
  new.load_weights(path)
  np.testing.assert_allclose(new.log_prob(x).numpy(), expected, rtol=1e-6)
  assert np.abs(expected - tff.models.NeuralSplineFlow(
      event_shape=[4], num_blocks=2, hidden_units=(8,), linear="permute",
      actnorm=False).log_prob(x).numpy()).max() > 1e-2
  with pytest.raises(ValueError, match="conditioner_layout applies to coupling"):
    tff.models.NeuralSplineFlow(event_shape=[4], autoregressive=True,
                                conditioner_layout="dense")
