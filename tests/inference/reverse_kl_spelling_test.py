"""The issue's spelling `FlowModel(objective="reverse_kl", target_log_prob=fn)`.

It builds `tff.objectives.ReverseKL(fn)` with its defaults, so it must train exactly as
the object spelling does (the same losses and weights at the same seed, eagerly and
under XLA), evaluate to the negative ELBO computed independently through
`model.distribution`, save and load as the object does, and refuse the combinations
that do not make sense with errors that say what to pass instead.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tests.testing import flow_helpers
import tfp_flows as tff
from tfp_flows import objectives

tfd = tfp.distributions

TARGET = tfd.MultivariateNormalDiag([1.0, -1.0], [0.5, 2.0])
LOG_Z = 1.5


@keras.saving.register_keras_serializable(package="tfp_flows_tests")
def spelling_target_log_prob(x):
  return TARGET.log_prob(x) + LOG_Z


def _layers():
  keras.utils.set_random_seed(0)
  return [tff.layers.AffineCoupling(hidden_units=(8,), scale="exp"),
          tff.layers.AffineCoupling(hidden_units=(8,), scale="exp", reverse=True),
          tff.layers.GaussianPrior()]


def _by_name():
  return tff.FlowModel(_layers(), [2], objective="reverse_kl",
                       target_log_prob=spelling_target_log_prob)


def _by_object():
  return tff.FlowModel(_layers(), [2],
                       objective=objectives.ReverseKL(spelling_target_log_prob))


def _weights(model):
  return [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]


@pytest.mark.parametrize("jit_compile", [False, True], ids=["eager", "xla"])
def test_name_and_object_train_alike(jit_compile):
  histories, weights = [], []
  for build in (_by_name, _by_object):
    model = build()
    objective = model.objective
    assert isinstance(objective, objectives.ReverseKL)
    assert (objective.target_log_prob, objective.num_samples, objective.seed,
            objective.constraining_bijector) == (spelling_target_log_prob, 64, 0, None)
    model.compile(optimizer=keras.optimizers.Adam(2e-2), jit_compile=jit_compile)
    histories.append(model.fit(epochs=3, steps_per_epoch=10, verbose=0).history)
    weights.append(_weights(model))
  assert set(histories[0]) >= {"loss", "elbo", "ess_fraction", "log_normalizer"}
  # The same seed (the objective's SeedGenerator(0)) and weights: the same numbers.
  assert histories[0] == histories[1]
  for by_name, by_object in zip(*weights):
    np.testing.assert_array_equal(by_name, by_object)
  # It trained: loss = KL(q || p) - log Z fell towards -log Z.
  loss = histories[0]["loss"]
  assert loss[-1] < loss[0] and loss[-1] > -LOG_Z - 0.05


@pytest.mark.parametrize("jit_compile", [False, True], ids=["eager", "xla"])
def test_evaluation_loss_is_the_negative_elbo_through_model_distribution(jit_compile):
  """An independent reference: log q by TFP's inverse pass, not the sampling pass."""
  model = _by_name()
  rng = np.random.default_rng(2)
  for weight in model.trainable_weights:
    weight.assign_add(0.2 * rng.normal(size=weight.shape).astype("float32"))
  model.compile(optimizer="adam", jit_compile=jit_compile)
  logs = model.evaluate(tf.zeros([1, 1]), verbose=0, return_dict=True)
  # The evaluation draws, sampled as evaluate samples them (stateless normals are
  # other numbers under XLA than eagerly).
  draw = lambda: model.base_distribution.sample(  # pylint: disable=unnecessary-lambda-assignment
      64, seed=tf.constant(objectives.EVALUATION_SEED))
  z = tf.function(draw, jit_compile=True)() if jit_compile else draw()
  # A fresh tensor, so that TFP's bijector cache cannot reuse the forward pass.
  x = tf.constant(model.bijector.forward(z).numpy())
  log_w = (spelling_target_log_prob(x) - model.distribution.log_prob(x)).numpy()
  log_w = log_w.astype(np.float64)
  np.testing.assert_allclose(logs["loss"], -log_w.mean(), rtol=1e-5)
  np.testing.assert_allclose(logs["elbo"], log_w.mean(), rtol=1e-5)
  w = np.exp(log_w - log_w.max())
  np.testing.assert_allclose(logs["ess_fraction"], w.sum() ** 2 / (64 * (w ** 2).sum()),
                             rtol=1e-4)
  np.testing.assert_allclose(logs["log_normalizer"],
                             log_w.max() + np.log(w.mean()), rtol=1e-5)


def test_keras_round_trip(tmp_path):
  model = _by_name()
  model.compile(optimizer="adam")
  model.fit(epochs=1, steps_per_epoch=3, verbose=0)
  path = str(tmp_path / "vi.keras")
  model.save(path)
  loaded = keras.saving.load_model(path)
  assert isinstance(loaded.objective, objectives.ReverseKL)
  assert (loaded.objective.target_log_prob, loaded.objective.num_samples) == (
      spelling_target_log_prob, 64)
  # The target is saved once, inside the objective, as in the object spelling.
  assert "target_log_prob" not in model.get_config()
  assert (model.get_config()["objective"] ==
          _by_object().get_config()["objective"])
  flow_helpers.assert_same_reverse_kl_model(loaded, model)


def test_a_lambda_target_loads_only_unsafely_in_both_spellings(tmp_path):
  """Keras serialises a lambda as code: loading it needs safe_mode=False either way."""
  target = lambda x: TARGET.log_prob(x)  # pylint: disable=unnecessary-lambda-assignment
  for i, objective in enumerate([dict(objective="reverse_kl", target_log_prob=target),
                                 dict(objective=objectives.ReverseKL(target))]):
    model = tff.FlowModel(_layers(), [2], **objective)
    path = str(tmp_path / f"lambda{i}.keras")
    with pytest.warns(UserWarning, match="lambda"):
      model.save(path)
    with pytest.raises(ValueError, match="safe_mode=False"):
      keras.saving.load_model(path)


def test_bad_combinations_are_clear_errors():
  with pytest.raises(ValueError, match="objective='reverse_kl' fits the flow to an "
                                       "unnormalised target: pass target_log_prob=fn"):
    tff.FlowModel(_layers(), [2], objective="reverse_kl")
  for name in ("maximum_likelihood", "flow_matching"):
    with pytest.raises(ValueError, match=f"use it with objective='reverse_kl'; got "
                                         f"objective='{name}'"):
      tff.FlowModel(_layers(), [2], objective=name,
                    target_log_prob=spelling_target_log_prob)
  # The default objective (maximum likelihood) with a target is the same mistake.
  with pytest.raises(ValueError, match="objective='maximum_likelihood'"):
    tff.FlowModel(_layers(), [2], target_log_prob=spelling_target_log_prob)
  with pytest.raises(ValueError, match="got ReverseKL and a target_log_prob"):
    tff.FlowModel(_layers(), [2], objective=objectives.ReverseKL(spelling_target_log_prob),
                  target_log_prob=spelling_target_log_prob)
  with pytest.raises(ValueError, match="optimal_transport=True pairs flow-matching"):
    tff.FlowModel(_layers(), [2], objective="reverse_kl", optimal_transport=True,
                  target_log_prob=spelling_target_log_prob)
  with pytest.raises(ValueError, match="must be a callable"):
    tff.FlowModel(_layers(), [2], objective="reverse_kl", target_log_prob=1.0)
  # Model checks run for the name as for the object.
  with pytest.raises(ValueError, match="ResidualBlock"):
    tff.FlowModel([tff.layers.ResidualBlock(hidden_units=(4,))], [2],
                  objective="reverse_kl", target_log_prob=spelling_target_log_prob)
