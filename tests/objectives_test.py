"""tfp_flows.objectives: what FlowModel.fit minimises, as pluggable objects.

FlowModel's train and test steps delegate to the objective (its loss, its metrics,
the variables it trains); the old string spellings keep working, objects and strings
give the same training, `.keras` round trips keep the objective, and a new objective
plugs in without touching FlowModel.
"""

import sys

import keras
import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

import tfp_flows as tff
from tfp_flows import objectives


def _data(n=64, seed=0):
  return (np.random.default_rng(seed).normal(size=(n, 2)) * [1.0, 0.5] + 1.0).astype(
      "float32")


def _ffjord(**kwargs):
  keras.utils.set_random_seed(0)
  return tff.models.FFJORDFlow([2], hidden_units=(8,), actnorm=False, solver="rk4",
                               num_steps=2, gradient="backprop", **kwargs)


def _weights(model):
  return [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]


def test_strings_and_objects_train_alike():
  by_name = tff.FlowModel(_ffjord().flow_layers, [2], objective="flow_matching",
                          optimal_transport=True)
  keras.utils.set_random_seed(0)
  layers = _ffjord().flow_layers
  by_object = tff.FlowModel(layers, [2],
                            objective=objectives.FlowMatching(optimal_transport=True))
  histories = []
  for model in (by_name, by_object):
    assert isinstance(model.objective, objectives.FlowMatching)
    assert model.objective.optimal_transport
    keras.utils.set_random_seed(1)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    histories.append(model.fit(_data(), batch_size=32, epochs=1, shuffle=False,
                               verbose=0).history)
  assert histories[0] == histories[1]
  for a, b in zip(_weights(by_name), _weights(by_object)):
    np.testing.assert_array_equal(a, b)
  assert isinstance(tff.FlowModel([tff.layers.ActNorm()], [2]).objective,
                    objectives.MaximumLikelihood)


def test_flow_matching_rejects_a_context_as_maximum_likelihood_does():
  # An unconditional flow given fit(x, y) must not train on x alone.
  x, y = _data(), np.zeros([64, 1], "float32")
  for training in ("flow_matching", "maximum_likelihood"):
    model = _ffjord(training=training)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    with pytest.raises(ValueError, match="has no context_shape, so it takes no context"):
      model.fit(x, y, batch_size=32, epochs=1, verbose=0)


def test_flow_matching_rejects_points_of_another_event_shape():
  model = _ffjord(training="flow_matching")
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  with pytest.raises(ValueError, match="log_prob takes points of event_shape"):
    model.fit(np.zeros([64, 3], "float32"), batch_size=32, epochs=1, verbose=0)


def test_example_weights_are_an_error_not_dropped():
  # Keras drops sample_weight when y is None: fit would train unweighted, silently.
  model = tff.models.NeuralSplineFlow(2, num_layers=1, hidden_units=(4,))
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  x, weights = _data(), np.zeros([64], "float32")
  with pytest.raises(ValueError, match="sample_weight is not supported"):
    model.fit(x, sample_weight=weights, batch_size=32, verbose=0)
  with pytest.raises(ValueError, match="class_weight is not supported"):
    model.fit(x, class_weight={0: 1.0}, batch_size=32, verbose=0)
  with pytest.raises(ValueError, match="sample_weight is not supported"):
    model.evaluate(x, sample_weight=weights, verbose=0)
  # train_on_batch passed class weights to Keras, which failed with an IndexError.
  with pytest.raises(ValueError, match="class_weight is not supported"):
    model.train_on_batch(x, class_weight={0: 2.0})
  with pytest.raises(ValueError, match="sample_weight is not supported"):
    model.train_on_batch(x, sample_weight=weights)
  triples = tf.data.Dataset.from_tensor_slices((x, x[:, :1], weights)).batch(32)
  with pytest.raises(ValueError, match="got a third element"):
    model.fit(triples, verbose=0)


def test_flow_matching_val_loss_is_the_seeded_regression_loss():
  # Evaluation uses a fixed seed: val_loss repeats, and it is the layer's own
  # flow-matching loss with that seed; nll is the exact likelihood.
  model = _ffjord(training="flow_matching")
  layer = model.flow_layers[-1]
  for weight in layer.net.trainable_weights:
    weight.assign(0.3 * np.random.default_rng(4).normal(size=weight.shape))
  model.compile(optimizer="adam")
  x = _data(32, seed=5)
  first = model.evaluate(x, batch_size=32, verbose=0, return_dict=True)
  second = model.evaluate(x, batch_size=32, verbose=0, return_dict=True)
  assert first == second
  expected = layer.flow_matching_loss(x, seed=tf.constant(objectives.EVALUATION_SEED))
  np.testing.assert_allclose(first["loss"], float(expected), rtol=1e-6)
  np.testing.assert_allclose(first["flow_matching_loss"], float(expected), rtol=1e-6)
  np.testing.assert_allclose(first["nll"], -model.log_prob(x).numpy().mean(), rtol=1e-5)


def test_keras_round_trip_keeps_the_objective(tmp_path):
  model = _ffjord(training="flow_matching", optimal_transport=True)
  path = str(tmp_path / "model.keras")
  model.save(path)
  loaded = keras.saving.load_model(path)
  assert isinstance(loaded.objective, objectives.FlowMatching)
  assert loaded.objective.optimal_transport
  # A config written before objectives were objects (strings) still loads.
  config = {**model.get_config(), "objective": "flow_matching", "optimal_transport": True}
  old = tff.FlowModel.from_config(config)
  assert isinstance(old.objective, objectives.FlowMatching)
  assert old.objective.optimal_transport


class _ActNormOnly(objectives.Objective):
  """Maximum likelihood of the first layer alone: a new objective, FlowModel unchanged."""

  def metric_names(self, model, training):
    return ("log_scale_sum",)

  def compute(self, model, data, training):
    layer = model.flow_layers[0]
    log_prob = model(data, training=training)
    metrics = {"log_scale_sum": tf.reduce_sum(layer.log_scale)}
    return objectives.Result(-tf.reduce_mean(log_prob), metrics, tf.size(log_prob))

  def trainable_variables(self, model):
    return model.flow_layers[0].trainable_variables


def test_a_new_objective_plugs_in():
  keras.utils.set_random_seed(0)
  model = tff.FlowModel([tff.layers.ActNorm(data_init=False),
                         tff.layers.AffineCoupling(hidden_units=(4,))], [2],
                        objective=_ActNormOnly())
  coupling = [keras.ops.convert_to_numpy(v) for v in model.flow_layers[1].weights]
  model.compile(optimizer=keras.optimizers.SGD(0.0))
  x = _data(16)
  history = model.fit(x, batch_size=16, epochs=1, verbose=0).history
  # At learning rate 0 the zero-initialised coupling is the identity and ActNorm too:
  # the loss is the N(0, I) NLL of the data.
  expected = -scipy.stats.norm.logpdf(x.astype(np.float64)).sum(-1).mean()
  np.testing.assert_allclose(history["loss"], [expected], rtol=1e-6)
  assert set(history) == {"loss", "loss_max", "log_scale_sum"}
  model.compile(optimizer=keras.optimizers.SGD(0.1))
  model.fit(x, batch_size=16, epochs=2, verbose=0)
  assert np.abs(model.flow_layers[0].loc.numpy()).max() > 1e-2
  for before, weight in zip(coupling, model.flow_layers[1].weights):
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(weight), before)


def test_bad_objectives_are_clear_errors():
  layers = lambda: [tff.layers.ActNorm()]  # pylint: disable=unnecessary-lambda-assignment
  with pytest.raises(ValueError, match="objective must be one of .*'maximum_likelihood'"):
    tff.FlowModel(layers(), [2], objective="elbo")
  with pytest.raises(ValueError, match="objective='reverse_kl' .*pass target_log_prob=fn"):
    tff.FlowModel(layers(), [2], objective="reverse_kl")
  with pytest.raises(ValueError, match="optimal_transport=True pairs flow-matching"):
    tff.FlowModel(layers(), [2], optimal_transport=True)
  with pytest.raises(ValueError, match="FlowMatching\\(optimal_transport=True\\)"):
    tff.FlowModel(layers(), [2], objective=objectives.FlowMatching(),
                  optimal_transport=True)
  with pytest.raises(ValueError, match="the base-side \\(last\\) layer must be one"):
    tff.FlowModel(layers(), [2], objective=objectives.FlowMatching())


if __name__ == "__main__":
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
