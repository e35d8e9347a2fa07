"""tfp_flows.layers.ResidualBlock: estimator per mode, seeding, exact evaluation, XLA, errors.

The layer's evaluation log-det is checked against an independent reference: the dense
Jacobian of the residual map y + g(y), built from the layer's own `residual_fn()` with
`tf.GradientTape.batch_jacobian`, and numpy's slogdet in float64.
"""

import json
import os
import re
import sys
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfp_flows as tff
from tests.testing import flow_helpers
from tests.testing import model_checks

D = 3
# `.keras` file written by tfp_flows before `num_exact_terms` (commit 92995b0, config key
# "n_exact_terms"), made after `keras.utils.set_random_seed(0)` by
# `tff.FlowModel([tff.layers.ResidualBlock(hidden_units=(4,), lipschitz=0.9,
# log_det="series", n_exact_terms=3)], event_shape=[2])` and
# `flow_helpers.perturb_weights(model, scale=0.3)`; LEGACY_LOG_PROB is its
# `log_prob(LEGACY_X)` computed by that code (evaluation mode: the exact log-det).
LEGACY_FILE = os.path.join(os.path.dirname(__file__), "testdata",
                           "legacy_residual_block.keras")
LEGACY_X = np.array([[0.3, -1.2], [-0.5, 0.4], [1.7, 0.05]], np.float32)
LEGACY_LOG_PROB = np.array([-2.811812, -2.3038516, -3.3047314], np.float32)


pytestmark = pytest.mark.usefixtures("keras_seed")


def _perturb(model):
  """Moves the weights off their initial values (the spectral norm keeps Lip(g) <= c)."""
  flow_helpers.perturb_weights(model, scale=0.3)


def _model(event_shape=(D,), **kwargs):
  kwargs.setdefault("hidden_units", (16,))
  kwargs.setdefault("lipschitz", 0.9)
  model = tff.FlowModel([tff.layers.ResidualBlock(**kwargs)], list(event_shape))
  _perturb(model)
  return model, model.flow_layers[0]


def _data(shape=(8, D), seed=2):
  return flow_helpers.normal_data(shape, seed=seed)


def _reference_log_det(layer, x):
  """log|det(I + J_g(x))| per row from batch_jacobian of y + g(y) and float64 slogdet."""
  x = tf.constant(x)
  flat = tf.reshape(x, [x.shape[0], -1])
  with tf.GradientTape() as tape:
    tape.watch(flat)
    y = tf.reshape(flat, x.shape)
    residual = tf.reshape(y + layer.residual_fn()(y), flat.shape)
  jacobian = tape.batch_jacobian(residual, flat).numpy().astype("float64")
  sign, log_det = np.linalg.slogdet(jacobian)
  assert np.all(sign > 0)
  return log_det


def test_evaluation_log_prob_is_deterministic_and_exact():
  model, layer = _model()
  x = _data()
  log_prob = model.log_prob(x).numpy()
  np.testing.assert_array_equal(model.log_prob(x).numpy(), log_prob)
  z, ildj = layer(tf.constant(x), training=False)
  np.testing.assert_array_equal(layer(tf.constant(x), training=False)[1].numpy(),
                                ildj.numpy())
  reference = _reference_log_det(layer, x)
  assert np.abs(reference).max() > 0.05  # the perturbed block is far from the identity
  np.testing.assert_allclose(ildj.numpy(), reference, rtol=0, atol=1e-5)
  z_ref = x + layer.residual_fn()(tf.constant(x)).numpy()
  np.testing.assert_allclose(z.numpy(), z_ref, rtol=0, atol=1e-6)
  base = -0.5 * np.sum(z_ref.astype("float64")**2, -1) - 0.5 * D * np.log(2 * np.pi)
  np.testing.assert_allclose(log_prob, base + reference, rtol=0, atol=2e-5)
  # The evaluation bijector is the exact one, and model.distribution agrees.
  assert layer.make_bijector().log_det_method == "exact"
  np.testing.assert_allclose(model.distribution.log_prob(x).numpy(), log_prob, rtol=0,
                             atol=1e-5)


def test_image_evaluation_log_det_is_exact():
  model, layer = _model(event_shape=(4, 4, 1), hidden_units=(4,))
  x = _data(shape=(3, 4, 4, 1))
  _, ildj = layer(tf.constant(x), training=False)
  reference = _reference_log_det(layer, x)
  assert np.abs(reference).max() > 0.05
  np.testing.assert_allclose(ildj.numpy(), reference, rtol=0, atol=1e-4)


def test_norm_methods_name_each_normalised_layers_bound():
  _, layer = _model()
  assert layer.norm_methods() == [l.norm_method() for l in layer._net]  # pylint: disable=protected-access
  assert set(layer.norm_methods()) == {"Gram iteration"}
  assert all(m.startswith("power iteration") for m in layer.norm_methods(training=True))


def test_log_det_mode_per_mode_and_event_size():
  _, layer = _model()
  assert layer.log_det_mode(training=True) == "russian_roulette"
  assert layer.log_det_mode(training=False) == "exact"
  assert layer.log_det_mode() == "exact"
  _, series_layer = _model(exact_max_dims=2)
  mode = series_layer.log_det_mode(training=False)
  match = re.fullmatch(r"series \((\d+) terms\)", mode)
  assert match, mode
  # The fewest terms whose truncation bias D L^(n+1) / ((n+1)(1-L)) is below 1e-3.
  n, lip = int(match.group(1)), 0.9
  bias = lambda n: D * lip**(n + 1) / ((n + 1) * (1 - lip))
  assert bias(n) < 1e-3 <= bias(n - 1), (n, bias(n), bias(n - 1))
  assert series_layer.log_det_mode(training=True) == "russian_roulette"
  bijector = series_layer.make_bijector()
  assert bijector.log_det_method == "series"
  x = tf.constant(_data())
  first = series_layer(x, training=False)[1].numpy()
  np.testing.assert_array_equal(series_layer(x, training=False)[1].numpy(), first)
  _, exact_layer = _model(log_det="exact")
  assert exact_layer.log_det_mode(training=True) == "exact"


def _training_log_prob(seed, x):
  keras.utils.set_random_seed(seed)
  model = tff.FlowModel([tff.layers.ResidualBlock(hidden_units=(16,), lipschitz=0.9)], [D])
  _perturb(model)
  return model(tf.constant(x), training=True).numpy()


def test_training_estimates_repeat_under_a_fixed_seed():
  x = _data()
  first = _training_log_prob(5, x)
  np.testing.assert_array_equal(_training_log_prob(5, x), first)
  assert np.abs(_training_log_prob(6, x) - first).max() > 1e-4


def _freeze_power_iteration(layer):
  """A function that puts every u, v of the layer back to their current values.

  Training calls of g take one power-iteration step and store it, which moves the
  normalised kernels slightly; restoring u, v makes two training calls use one g.
  """
  net = layer._net  # pylint: disable=protected-access
  state = [(l.u.numpy(), l.v.numpy()) for l in net]

  def restore():
    for l, (u, v) in zip(net, state):
      l.u.assign(u)
      l.v.assign(v)
  return restore


def test_consecutive_training_calls_draw_new_roulette_terms():
  model, layer = _model()
  x = tf.constant(_data(shape=(64, D)))
  eval_ildj = layer(x, training=False)[1].numpy()
  restore = _freeze_power_iteration(layer)
  zs, ildjs = [], []
  for _ in range(3):
    restore()
    z, ildj = layer(x, training=True)
    zs.append(z.numpy())
    ildjs.append(ildj.numpy())
  # The same g every call (same z), but new probes and counts: different estimates.
  for z in zs[1:]:
    np.testing.assert_array_equal(z, zs[0])
  for a, b in [(0, 1), (1, 2), (0, 2)]:
    assert np.abs(ildjs[a] - ildjs[b]).max() > 1e-3
  # Each is an estimate of the exact log-det: the batch means are close to it.
  for ildj in ildjs:
    assert abs(ildj.mean() - eval_ildj.mean()) < 0.1, (ildj.mean(), eval_ildj.mean())
  seeds = [layer.make_bijector(training=True).parameters["seed"].numpy() for _ in range(2)]
  assert not np.array_equal(seeds[0], seeds[1])


def test_fixed_seed_training_estimate_is_the_same_under_xla():
  """A training bijector with a given seed gives the same roulette estimate eagerly and
  under XLA (the count and the probes come from Philox integer bits)."""
  _, layer = _model()
  x = tf.constant(_data())
  restore = _freeze_power_iteration(layer)

  def estimate(x, seed):
    bijector = layer.make_bijector(training=True, seed=seed)
    return bijector.inverse_log_det_jacobian(x, event_ndims=1)

  seed = tf.constant([1, 2])
  eager = estimate(x, seed).numpy()
  restore()
  xla = tf.function(estimate, jit_compile=True)(x, seed).numpy()
  restore()
  other = estimate(x, tf.constant([3, 4])).numpy()
  print(f"XLA vs eager roulette: max |diff| {np.abs(xla - eager).max():.3g}; "
        f"another seed: {np.abs(other - eager).max():.3g}")
  np.testing.assert_allclose(xla, eager, rtol=0, atol=1e-5)
  assert np.abs(other - eager).max() > 1e-3


def test_argument_errors():
  with pytest.raises(ValueError, match=r"lipschitz must be in \(0, 1\).*got 1.0"):
    tff.layers.ResidualBlock(lipschitz=1.0)
  with pytest.raises(ValueError, match=r"lipschitz must be in \(0, 1\).*got 0"):
    tff.layers.ResidualBlock(lipschitz=0)
  with pytest.raises(ValueError, match="log_det must be one of .* got 'hutchinson'"):
    tff.layers.ResidualBlock(log_det="hutchinson")
  with pytest.raises(ValueError, match="gradient must be 'neumann' or 'backprop'"):
    tff.layers.ResidualBlock(gradient="adjoint")
  with pytest.raises(ValueError, match="hidden_units must be positive sizes"):
    tff.layers.ResidualBlock(hidden_units=(0,))
  with pytest.raises(ValueError, match=r"takes vectors \[N, D\] or images"):
    tff.FlowModel([tff.layers.ResidualBlock(hidden_units=(4,))], [2, 2])
  # Checked at construction, not at the first call.
  with pytest.raises(ValueError, match="n_exact_terms must be an int >= 0"):
    tff.layers.ResidualBlock(n_exact_terms=-1)
  with pytest.raises(ValueError, match="n_exact_terms must be an int >= 1 with "
                                       "log_det='series'"):
    tff.layers.ResidualBlock(log_det="series", n_exact_terms=0)
  with pytest.raises(ValueError, match="exact_max_dims must be a non-negative int"):
    tff.layers.ResidualBlock(exact_max_dims=-5)
  with pytest.raises(ValueError, match="tolerance must be positive"):
    tff.layers.ResidualBlock(tolerance=0.0)
  with pytest.raises(ValueError, match="max_iterations must be an int >= 1"):
    tff.layers.ResidualBlock(max_iterations=0)
  with pytest.raises(ValueError, match="power_iterations must be an int >= 1"):
    tff.layers.ResidualBlock(power_iterations=0)


def test_power_iterations_reach_every_spectral_norm_layer_and_the_config():
  model = tff.models.ResidualFlow([D], num_blocks=2, hidden_units=(8,),
                                  power_iterations=3)
  blocks = [l for l in model.flow_layers if isinstance(l, tff.layers.ResidualBlock)]
  assert [layer.num_iterations for b in blocks for layer in b._net] == [3] * 4  # pylint: disable=protected-access
  assert blocks[0]._net[0].norm_method(training=True) == "power iteration (3 steps)"  # pylint: disable=protected-access
  clone = tff.layers.ResidualBlock.from_config(blocks[0].get_config())
  assert clone.power_iterations == 3


def test_float64_block_matches_the_float64_jacobian():
  layer = tff.layers.ResidualBlock(hidden_units=(16,), lipschitz=0.9, dtype="float64")
  layer.build((None, D))
  _perturb(layer)
  x = np.random.default_rng(3).normal(size=(8, D))
  z, ildj = layer(tf.constant(x), training=False)
  assert z.dtype == tf.float64 and ildj.dtype == tf.float64
  assert all(w.dtype == "float64" for w in layer.weights if "seed" not in w.path)
  np.testing.assert_allclose(ildj.numpy(), _reference_log_det(layer, x), rtol=1e-10,
                             atol=1e-12)


def test_evaluation_series_is_the_same_for_a_point_in_any_batch():
  # exact_max_dims=0 forces the evaluation series (one probe per point, keyed by the
  # point's values), whose estimate must not depend on the point's batch or position.
  model, layer = _model(exact_max_dims=0)
  assert layer.log_det_mode().startswith("series (")
  model_checks.assert_log_prob_is_batch_independent(model, _data(shape=(6, D)))
  # The estimate is one-probe Hutchinson: unbiased up to the 1e-3 truncation bias, not
  # exact per point; the mean over many points is within 4 standard errors of exact.
  many = _data(shape=(2000, D), seed=7)
  errors = (layer(tf.constant(many), training=False)[1].numpy()
            - _reference_log_det(layer, many))
  assert abs(errors.mean()) < 4 * errors.std() / np.sqrt(len(errors)) + 1e-3


def test_validate_args_raises_when_sampling_does_not_converge():
  model, _ = _model(max_iterations=1, validate_args=True)
  with pytest.raises(tf.errors.InvalidArgumentError, match="fixed-point inverse"):
    model.sample(4, seed=(1, 2))
  unchecked, _ = _model(max_iterations=1)
  assert np.isnan(keras.ops.convert_to_numpy(unchecked.sample(4, seed=(1, 2)))).any()


def _series_training_log_det(x, **kwargs):
  """(training log-det, [J, J^2, J^3] per row) of a perturbed 1-D block with a fixed seed.

  With a 1-D event the Rademacher probe is +-1 and v J^k v = J^k exactly, so the
  "series" estimate with n terms is sum_{k<=n} (-1)^(k+1) J^k / k, whatever the seed.
  """
  keras.utils.set_random_seed(3)
  model = tff.FlowModel([tff.layers.ResidualBlock(hidden_units=(4,), lipschitz=0.9,
                                                  log_det="series", **kwargs)], [1])
  _perturb(model)
  layer = model.flow_layers[0]
  ildj = layer(tf.constant(x), training=True)[1].numpy()
  # Both kernels are rank one ([1, 4] and [4, 1]): one power step finds their norm
  # exactly, so the training call's g is the g of the reference below.
  y = tf.constant(x, tf.float64)
  g = layer.residual_fn(training=False)
  with tf.GradientTape() as tape:
    tape.watch(y)
    gy = tf.cast(g(tf.cast(y, tf.float32)), tf.float64)
  jacobian = tape.gradient(gy, y).numpy()[:, 0]
  return ildj, jacobian


@pytest.mark.parametrize("spelling", ["num_exact_terms", "n_exact_terms"])
def test_num_exact_terms_and_its_older_alias_set_the_series_length(spelling):
  x = _data(shape=(5, 1))
  ildj, jacobian = _series_training_log_det(x, **{spelling: 3})
  assert np.abs(jacobian).max() > 0.2  # far enough from 0 that J^3 / 3 shows
  series = lambda n: sum((-1) ** (k + 1) * jacobian ** k / k for k in range(1, n + 1))
  np.testing.assert_allclose(ildj, series(3), rtol=0, atol=2e-5)
  assert np.abs(series(3) - series(2)).max() > 1e-3  # the default (2) would differ


def test_num_exact_terms_spellings_config_and_errors():
  new = tff.layers.ResidualBlock(log_det="series", num_exact_terms=3, name="block")
  old = tff.layers.ResidualBlock(log_det="series", n_exact_terms=3, name="block")
  assert new.num_exact_terms == old.num_exact_terms == old.n_exact_terms == 3
  config = new.get_config()
  assert config == old.get_config()
  assert config["num_exact_terms"] == 3 and "n_exact_terms" not in config
  assert config["log_det_estimator"]["num_exact_terms"] == 3
  assert tff.layers.ResidualBlock.from_config(config).num_exact_terms == 3
  assert tff.layers.ResidualBlock().num_exact_terms == 2
  with pytest.raises(ValueError, match=r"num_exact_terms= and n_exact_terms= are two "
                                       r"spellings .* Pass only num_exact_terms=\."):
    tff.layers.ResidualBlock(num_exact_terms=3, n_exact_terms=3)
  with pytest.raises(ValueError, match="num_exact_terms must be an int >= 0"):
    tff.layers.ResidualBlock(num_exact_terms=-1)


def test_keras_file_with_the_older_spelling_still_loads(tmp_path):
  with zipfile.ZipFile(LEGACY_FILE) as archive:
    saved = json.loads(archive.read("config.json"))["config"]["flow_layers"][0]["config"]
  assert saved["n_exact_terms"] == 3 and "num_exact_terms" not in saved
  assert saved["log_det_estimator"]["n_exact_terms"] == 3
  model = keras.saving.load_model(LEGACY_FILE)
  layer = model.flow_layers[0]
  assert (layer.num_exact_terms, layer.log_det, layer.lipschitz) == (3, "series", 0.9)
  log_prob = model.log_prob(LEGACY_X).numpy()
  np.testing.assert_allclose(log_prob, LEGACY_LOG_PROB, rtol=0, atol=1e-5)
  # Independently: the standard normal of z = x + g(x) plus the autodiff log-det.
  z = LEGACY_X + layer.residual_fn()(tf.constant(LEGACY_X)).numpy()
  base = -0.5 * np.sum(z.astype("float64") ** 2, -1) - np.log(2 * np.pi)
  np.testing.assert_allclose(log_prob, base + _reference_log_det(layer, LEGACY_X),
                             rtol=0, atol=2e-5)
  xla = tf.function(model.log_prob, jit_compile=True)(tf.constant(LEGACY_X))
  np.testing.assert_allclose(xla.numpy(), log_prob, rtol=0, atol=1e-5)
  # Saved again, the file has the library's spelling and loads to the same numbers.
  path = str(tmp_path / "resaved.keras")
  model.save(path)
  with zipfile.ZipFile(path) as archive:
    resaved = json.loads(archive.read("config.json"))["config"]["flow_layers"][0]["config"]
  assert resaved["num_exact_terms"] == 3 and "n_exact_terms" not in resaved
  np.testing.assert_array_equal(keras.saving.load_model(path).log_prob(LEGACY_X).numpy(),
                                log_prob)


if __name__ == "__main__":
  # `main` of this file's py_test: under `bazel test` run the tests, not just the import.
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
