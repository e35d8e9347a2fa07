"""Keras-native VI: `FlowModel(objective=tff.objectives.ReverseKL(target_log_prob))`.

Targets with closed forms: a correlated Gaussian (mean, covariance, log Z) and a
TFP JointDistribution over (loc, scale) with `tfb.Exp` for the scale (the log-scale is
normal, so the fitted flow's marginals are known exactly).
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tests.testing import flow_helpers
import tfp_flows as tff

tfb = tfp.bijectors
tfd = tfp.distributions

MEAN = np.array([1.0, -0.5], np.float32)
COV = np.array([[1.0, 0.8], [0.8, 1.5]], np.float32)
LOG_Z = 3.0  # the target is Z * N(MEAN, COV): its unnormalised log-density adds LOG_Z
TARGET = tfd.MultivariateNormalTriL(MEAN, np.linalg.cholesky(COV))


def _target_log_prob(x):
  return TARGET.log_prob(x) + LOG_Z


def _model(objective):
  keras.utils.set_random_seed(0)
  return tff.FlowModel([tff.layers.AffineCoupling(hidden_units=(16,), scale="exp"),
                        tff.layers.GaussianPrior()], event_shape=[2], objective=objective)


@pytest.mark.parametrize("jit_compile", [False, True], ids=["eager", "xla"])
def test_vi_recovers_a_gaussian(jit_compile):
  model = _model(tff.objectives.ReverseKL(_target_log_prob, num_samples=64))
  schedule = keras.optimizers.schedules.CosineDecay(2e-2, decay_steps=800)
  model.compile(optimizer=keras.optimizers.Adam(schedule), jit_compile=jit_compile)
  history = model.fit(epochs=8, steps_per_epoch=100, verbose=0)
  logs = history.history
  assert set(logs) >= {"loss", "elbo", "ess_fraction", "log_normalizer"}
  # loss = -ELBO = KL(q || p) - log Z falls towards -log Z.
  assert logs["loss"][0] > logs["loss"][-1]
  np.testing.assert_allclose(logs["loss"][-1], -LOG_Z, atol=0.05)
  np.testing.assert_allclose(logs["elbo"][-1], -logs["loss"][-1], rtol=1e-5)
  assert logs["ess_fraction"][-1] > 0.85
  np.testing.assert_allclose(logs["log_normalizer"][-1], LOG_Z, atol=0.05)

  x = model.sample(20000, seed=1).numpy()
  # The fit is exact in the limit (the flow can represent the target); 20000 draws give
  # standard errors near 0.01, the remaining fit error is of the same order.
  np.testing.assert_allclose(x.mean(0), MEAN, atol=0.06)
  np.testing.assert_allclose(np.cov(x.T), COV, atol=0.1)
  # PSIS on fresh draws agrees with the closed forms.
  x = tf.constant(x[:4000])
  log_w = _target_log_prob(x) - model.log_prob(x)
  result = tff.inference.importance_weights(log_w.numpy())
  assert result.reliable and result.khat < 0.5
  np.testing.assert_allclose(result.log_normalizer, LOG_Z, atol=0.02)
  mean, _ = tff.inference.weighted_expectation(x.numpy(), log_w.numpy())
  np.testing.assert_allclose(mean, MEAN, atol=0.05)


def test_xla_step_equals_eager_step():
  """One training step from the same weights and seed: the same loss and new weights."""
  results = []
  for jit_compile in (False, True):
    model = _model(tff.objectives.ReverseKL(_target_log_prob, num_samples=16, seed=4))
    rng = np.random.default_rng(0)
    for weight in model.trainable_weights:  # no exactly-zero gradients (see Adam)
      weight.assign_add(0.1 * rng.normal(size=weight.shape).astype("float32"))
    model.compile(optimizer=keras.optimizers.SGD(1e-2), jit_compile=jit_compile)
    # Fixed base draws: stateless normals are other numbers under XLA.
    z = tf.constant(rng.normal(size=[16, 2]).astype("float32"))
    model.base_distribution = _FixedDraws(model.base_distribution, z)
    logs = model.fit(epochs=1, steps_per_epoch=1, verbose=0).history
    results.append((logs["loss"][0], [w.numpy() for w in model.trainable_weights]))
  np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-5)
  for xla, eager in zip(results[1][1], results[0][1]):
    np.testing.assert_allclose(xla, eager, rtol=1e-5, atol=1e-6)


class _FixedDraws(tfd.Distribution):
  """The base distribution, except that `sample` returns the given draws."""

  def __init__(self, base, draws):
    self._base, self._draws = base, draws
    super().__init__(dtype=base.dtype, reparameterization_type=tfd.FULLY_REPARAMETERIZED,
                     validate_args=False, allow_nan_stats=True)

  def _sample_n(self, n, seed=None):
    del n, seed
    return self._draws

  def _log_prob(self, x):
    return self._base.log_prob(x)

  def _event_shape(self):
    return self._base.event_shape

  def _batch_shape(self):
    return self._base.batch_shape


def test_joint_distribution_with_exp_constraint():
  """loc ~ N(1, 0.5), scale ~ LogNormal(0.3, 0.4) as a JointDistribution; tfb.Exp."""
  joint = tfd.JointDistributionNamed({
      "loc": tfd.Normal(1.0, 0.5), "scale": tfd.LogNormal(0.3, 0.4)})

  def target_log_prob(theta):
    return joint.unnormalized_log_prob({"loc": theta[..., 0], "scale": theta[..., 1]})

  constrain = tfb.Blockwise([tfb.Identity(), tfb.Exp()], block_sizes=[1, 1])
  model = _model(tff.objectives.ReverseKL(target_log_prob, num_samples=64,
                                          constraining_bijector=constrain))
  schedule = keras.optimizers.schedules.CosineDecay(2e-2, decay_steps=800)
  model.compile(optimizer=keras.optimizers.Adam(schedule), jit_compile=True)
  logs = model.fit(epochs=8, steps_per_epoch=100, verbose=0).history
  # Exactly representable: KL -> 0, so loss -> -log Z = 0 and ESS -> 1.
  np.testing.assert_allclose(logs["loss"][-1], 0.0, atol=0.05)
  assert logs["ess_fraction"][-1] > 0.85
  theta = constrain.forward(model.sample(20000, seed=2)).numpy()
  np.testing.assert_allclose(theta[:, 0].mean(), 1.0, atol=0.03)
  np.testing.assert_allclose(theta[:, 0].std(), 0.5, atol=0.03)
  log_scale = np.log(theta[:, 1])
  np.testing.assert_allclose(log_scale.mean(), 0.3, atol=0.03)
  np.testing.assert_allclose(log_scale.std(), 0.4, atol=0.03)
  assert np.all(theta[:, 1] > 0)


def test_unsupported_models_and_calls_are_clear_errors():
  objective = tff.objectives.ReverseKL(_target_log_prob)
  with pytest.raises(ValueError, match="ResidualBlock"):
    tff.FlowModel([tff.layers.ResidualBlock(hidden_units=(4,))], event_shape=[2],
                  objective=objective)
  with pytest.raises(ValueError, match="unconditional"):
    tff.FlowModel([tff.layers.AffineCoupling(conditional=True)], event_shape=[2],
                  context_shape=[1], objective=objective)
  with pytest.raises(ValueError, match="pass tff.objectives.ReverseKL\\(target_log_prob"):
    tff.FlowModel([tff.layers.AffineCoupling()], event_shape=[2], objective="reverse_kl")
  model = _model(objective)
  model.compile(optimizer="adam")
  with pytest.raises(ValueError, match="steps_per_epoch"):
    model.fit(epochs=1)
  # Evaluation draws with the fixed evaluation seed: the same numbers every time.
  first = model.evaluate(tf.zeros([1, 1]), verbose=0, return_dict=True)
  second = model.evaluate(tf.zeros([1, 1]), verbose=0, return_dict=True)
  assert math.isfinite(first["loss"]) and first == second
  np.testing.assert_allclose(first["elbo"], -first["loss"], rtol=1e-6)
  # Without data, as fit: evaluate(steps=) (a KeyError from Keras before).
  assert model.evaluate(steps=1, verbose=0, return_dict=True) == first
  with pytest.raises(ValueError, match="pass steps="):
    model.evaluate(verbose=0)


@keras.saving.register_keras_serializable(package="tfp_flows_tests")
def registered_target_log_prob(x):
  return _target_log_prob(x)


def test_keras_round_trip(tmp_path):
  model = _model(tff.objectives.ReverseKL(registered_target_log_prob, num_samples=16,
                                          seed=3))
  model.compile(optimizer="adam")
  model.fit(epochs=1, steps_per_epoch=3, verbose=0)
  path = str(tmp_path / "vi.keras")
  model.save(path)
  loaded = keras.saving.load_model(path)
  objective = loaded.objective
  assert isinstance(objective, tff.objectives.ReverseKL)
  assert (objective.target_log_prob, objective.num_samples, objective.seed) == (
      registered_target_log_prob, 16, 3)
  flow_helpers.assert_same_reverse_kl_model(loaded, model)


class _Target:

  def log_prob(self, x):
    return _target_log_prob(x)


@pytest.mark.parametrize("target", [_target_log_prob, _Target().log_prob],
                         ids=["unregistered function", "bound method"])
def test_a_target_no_load_could_find_is_an_error_at_save(tmp_path, target):
  # It saved by name, and every load then failed with Keras' "could not be deserialized".
  model = _model(tff.objectives.ReverseKL(target, num_samples=16))
  with pytest.raises(ValueError, match="not registered with Keras.*register_keras_serializable"):
    model.save(str(tmp_path / "vi.keras"))


def test_constraining_bijector_cannot_be_saved_silently(tmp_path):
  model = _model(tff.objectives.ReverseKL(registered_target_log_prob,
                                          constraining_bijector=tfb.Exp()))
  with pytest.raises(ValueError, match="save_weights"):
    model.save(str(tmp_path / "vi.keras"))
