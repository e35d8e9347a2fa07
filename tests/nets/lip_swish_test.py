"""Tests of tfp_flows.nets.LipSwish and lip_swish: 1-Lipschitz, values, training, saving."""

import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_flows import nets

# max_z d/dz [z sigmoid(z)], reached at z = 2.39936, computed once on a 4e6-point grid in
# float64 (the minimum is 1 - this at z = -2.39936).
MAX_SWISH_SLOPE = 1.0998393201
SOFTPLUS_HALF = math.log1p(math.exp(0.5))


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


@pytest.mark.parametrize("beta", [0.05, 0.3, SOFTPLUS_HALF, 1.0, 3.0, 10.0, 50.0, -1.0])
def test_derivative_is_bounded_by_one(beta):
  # x spans z = beta x over [-30, 30] with 2e5 points: the extrema at z = +-2.4 are inside.
  x = tf.constant(np.linspace(-30.0, 30.0, 200_001) / abs(beta))
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = nets.lip_swish(x, tf.constant(beta, tf.float64))
  slope = tape.gradient(y, x).numpy()
  assert np.max(np.abs(slope)) <= 1.0 + 1e-6
  # The bound is tight: the largest slope is max(swish') / 1.1 = 0.99985 for every beta.
  assert np.max(np.abs(slope)) == pytest.approx(MAX_SWISH_SLOPE / 1.1, abs=1e-6)
  # Autodiff against the closed form (s + z s (1 - s)) / 1.1.
  z = beta * x.numpy()
  s = _sigmoid(z)
  np.testing.assert_allclose(slope, (s + z * s * (1 - s)) / 1.1, rtol=1e-10, atol=1e-12)


def test_lipschitz_on_random_pairs():
  rng = np.random.default_rng(0)
  a, b = rng.normal(scale=5.0, size=(2, 100_000))
  beta = rng.uniform(0.01, 20.0, size=100_000)
  fa = nets.lip_swish(tf.constant(a), tf.constant(beta)).numpy()
  fb = nets.lip_swish(tf.constant(b), tf.constant(beta)).numpy()
  ratio = np.abs(fa - fb) / np.abs(a - b)
  assert np.max(ratio) < 1.0
  assert np.max(ratio) > 0.99  # pairs near the steepest point come close to the bound


def test_values_at_known_points():
  x = np.array([-3.0, -1.0, 0.0, 0.5, 1.0, 2.0, 40.0])
  for beta in (0.5, SOFTPLUS_HALF, 2.0):
    y = nets.lip_swish(tf.constant(x), beta).numpy()
    np.testing.assert_allclose(y, x * _sigmoid(beta * x) / 1.1, rtol=1e-14, atol=0)
    # sigmoid(z) + sigmoid(-z) = 1, so f(x) - f(-x) = x / 1.1 exactly.
    y_neg = nets.lip_swish(tf.constant(-x), beta).numpy()
    np.testing.assert_allclose(y - y_neg, x / 1.1, rtol=1e-14, atol=1e-15)
  # Hand-computed: f(1) at beta = 1 is sigmoid(1) / 1.1; f(0) = 0; f(40) = 40 / 1.1.
  assert float(nets.lip_swish(1.0, 1.0)) == pytest.approx(0.7310585786300049 / 1.1, rel=1e-7)
  assert float(nets.lip_swish(0.0, 3.0)) == 0.0
  assert float(nets.lip_swish(tf.constant(40.0, tf.float64), 1.0)) == pytest.approx(
      40.0 / 1.1, rel=1e-15)


def test_layer_starts_at_the_reference_slope():
  layer = nets.LipSwish()
  x = tf.constant(np.linspace(-4.0, 4.0, 9), tf.float32)
  y = layer(x)
  # The reference code stores the raw parameter b = 0.5; beta = softplus(b).
  assert float(layer.beta_parameter) == pytest.approx(0.5, abs=1e-6)
  assert float(layer.beta) == pytest.approx(SOFTPLUS_HALF, rel=1e-6)
  np.testing.assert_allclose(y, x.numpy() * _sigmoid(SOFTPLUS_HALF * x.numpy()) / 1.1,
                             rtol=1e-6)
  for beta in (1e-3, 2.0, 60.0):  # 60: softplus^-1 must not overflow exp
    layer = nets.LipSwish(initial_beta=beta)
    layer.build((None, 3))
    assert np.isfinite(float(layer.beta_parameter))
    assert float(layer.beta) == pytest.approx(beta, rel=1e-5)


def test_gradient_wrt_the_slope_parameter():
  layer = nets.LipSwish(initial_beta=1.5, dtype="float64")
  x = tf.constant(np.linspace(-3.0, 3.0, 13))
  with tf.GradientTape() as tape:
    y = tf.reduce_sum(layer(x))
  grad = float(tape.gradient(y, layer.beta_parameter))
  b = float(layer.beta_parameter)
  beta = math.log1p(math.exp(b))
  s = _sigmoid(beta * x.numpy())
  # d/db [x sigmoid(beta x) / 1.1] = x^2 s (1 - s) / 1.1 * softplus'(b), softplus' = sigmoid.
  expected = np.sum(x.numpy()**2 * s * (1 - s)) / 1.1 * _sigmoid(b)
  assert grad == pytest.approx(expected, rel=1e-10)
  assert grad > 0.1


def test_fit_with_xla_learns_the_slope_and_round_trips(tmp_path):
  keras.utils.set_random_seed(0)
  x = np.linspace(-3.0, 3.0, 64, dtype=np.float32)[:, None]
  y = x * _sigmoid(4.0 * x) / 1.1  # the same activation with a steeper slope
  model = keras.Sequential([keras.Input((1,)), nets.LipSwish(name="act")])
  model.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse", jit_compile=True)
  model.fit(x, y, batch_size=16, epochs=10, verbose=0)
  beta = float(model.get_layer("act").beta)
  assert beta > 2.5, beta  # moved from 0.974 towards 4

  path = os.path.join(tmp_path, "model.keras")
  model.save(path)
  loaded = keras.saving.load_model(path)
  assert loaded.get_layer("act").get_config() == model.get_layer("act").get_config()
  assert float(loaded.get_layer("act").beta_parameter) == float(
      model.get_layer("act").beta_parameter)
  np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())


def test_xla_matches_eager():
  layer = nets.LipSwish(initial_beta=0.7)
  x = tf.constant(np.random.default_rng(1).normal(scale=3.0, size=(4, 5)), tf.float32)
  np.testing.assert_allclose(tf.function(layer, jit_compile=True)(x), layer(x), rtol=1e-6,
                             atol=1e-7)


def test_config():
  layer = nets.LipSwish(initial_beta=2.0, name="act")
  config = layer.get_config()
  assert config["initial_beta"] == 2.0 and config["name"] == "act"
  assert nets.LipSwish.from_config(config).get_config() == config


@pytest.mark.parametrize("value, match", [
    (0.0, r"initial_beta must be a positive finite number; got 0.0"),
    (-1.0, r"got -1.0"),
    (math.inf, r"got inf"),
    (math.nan, r"got nan"),
    (True, r"got True"),
    ("1.0", r"got '1.0'"),
])
def test_argument_errors(value, match):
  with pytest.raises(ValueError, match=match):
    nets.LipSwish(initial_beta=value)
