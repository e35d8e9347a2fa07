"""`.keras` saving keeps the whole training state, random-generator states included.

Keras saves weights and optimizer state but not the layers' `keras.random.SeedGenerator`
states, so a reloaded model drew other dequantisation noise / Russian-roulette counts
than the original would have: one more epoch after a reload differed from continuing
(2.6e-3 Glow, 1.3e-3 residual). Now fit 1 epoch, save, load, and 1 more epoch on both
end with the same weights.
"""

import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_flows as tff

tfd = tfp.distributions

_PRESETS = {
    "glow": (lambda: tff.models.Glow([4, 4, 1], num_scales=1, steps_per_scale=1,
                                     hidden_channels=4), [4, 4, 1]),
    "residual": (lambda: tff.models.ResidualFlow([2], num_blocks=1, hidden_units=(8,)),
                 [2]),
}


@pytest.mark.parametrize("name", sorted(_PRESETS))
def test_training_continues_identically_after_a_reload(name, tmp_path):
  make, event_shape = _PRESETS[name]
  rng = np.random.default_rng(0)
  if name == "glow":
    x = rng.integers(0, 256, size=(32, *event_shape)).astype("float32")
  else:
    x = rng.normal(size=(32, *event_shape)).astype("float32")
  keras.utils.set_random_seed(0)
  model = make()
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  model.fit(x, batch_size=16, epochs=1, shuffle=False, verbose=0)
  path = str(tmp_path / "model.keras")
  model.save(path)
  keras.utils.set_random_seed(123)  # nothing but the file may make the two agree
  loaded = keras.saving.load_model(path)
  for m in (model, loaded):
    m.fit(x, batch_size=16, epochs=1, shuffle=False, verbose=0)
  assert len(model.variables) == len(loaded.variables)
  for a, b in zip(model.variables, loaded.variables):
    np.testing.assert_allclose(keras.ops.convert_to_numpy(b), keras.ops.convert_to_numpy(a),
                               rtol=1e-6, atol=1e-6, err_msg=a.path)


def _set_precision(dtype):
  keras.config.set_floatx(dtype)
  keras.config.set_dtype_policy(dtype)


@pytest.mark.parametrize("saved, loading", [("float64", "float32"), ("float32", "float64")])
def test_a_file_loads_in_its_own_dtype_whatever_the_floatx(saved, loading, tmp_path):
  floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
  path = str(tmp_path / "model.keras")
  x = np.random.default_rng(0).normal(size=(5, 2))
  try:
    _set_precision(saved)
    keras.utils.set_random_seed(0)
    model = tff.models.NeuralSplineFlow(2, num_layers=1, hidden_units=(4,))
    for weight in model.trainable_weights:
      weight.assign(weight + 0.1)
    expected = model.log_prob(x).numpy()
    model.save(path)
    _set_precision(loading)
    loaded = keras.saving.load_model(path)
    assert loaded.dtype_policy.name == saved
    assert loaded.base_distribution.dtype == saved
    np.testing.assert_allclose(loaded.log_prob(x).numpy(), expected, rtol=1e-6)
    assert loaded.sample(3, seed=1).dtype == saved
    tff.export.save(loaded, str(tmp_path / "export"))
  finally:
    keras.config.set_floatx(floatx)
    keras.config.set_dtype_policy(policy)


def _student_t_base():
  return tfd.Sample(tfd.StudentT(np.float32(3.0), np.float32(0.0), np.float32(1.0)), [2])


def _with_custom_base():
  keras.utils.set_random_seed(0)
  model = tff.FlowModel([tff.layers.ActNorm(), tff.layers.AffineCoupling(hidden_units=(8,))],
                        [2], base_distribution=_student_t_base())
  model.compile(optimizer="adam")
  x = np.random.default_rng(0).normal(size=[32, 2]).astype("float32")
  model.fit(x, batch_size=16, verbose=0)
  return model, x


def test_a_custom_base_is_not_replaced_by_the_standard_normal_on_load(tmp_path):
  # The config cannot hold the base; loading used to put the default in its place:
  # other densities (by 6 nats here) and no warning.
  model, x = _with_custom_base()
  model.save(tmp_path / "flow.keras")
  with pytest.raises(ValueError, match="custom base distribution.*custom_objects"):
    keras.models.load_model(tmp_path / "flow.keras")
  loaded = keras.models.load_model(tmp_path / "flow.keras",
                                   custom_objects={"base_distribution": _student_t_base()})
  assert loaded.has_custom_base
  np.testing.assert_allclose(loaded.log_prob(x).numpy(), model.log_prob(x).numpy(),
                             rtol=1e-6)
  # The base is the Student-t, not a normal with the same flow.
  standard = tff.FlowModel.from_config({**model.get_config(), "custom_base": False})
  standard.set_weights(model.get_weights())
  assert np.max(np.abs(standard.log_prob(x).numpy() - model.log_prob(x).numpy())) > 0.1


def test_clone_model_of_a_custom_base_model_needs_the_base():
  model, x = _with_custom_base()
  with pytest.raises(ValueError, match="custom base distribution"):
    keras.models.clone_model(model)
  with keras.saving.custom_object_scope({"base_distribution": _student_t_base()}):
    clone = keras.models.clone_model(model)
  clone.set_weights(model.get_weights())
  np.testing.assert_allclose(clone.log_prob(x).numpy(), model.log_prob(x).numpy(),
                             rtol=1e-6)


@pytest.mark.parametrize("variable", [
    lambda: tf.Variable([0.0, 0.0]),
    # TFP turns a keras.Variable into a constant: not even the distribution can train it.
    lambda: keras.Variable([0.0, 0.0])])
def test_a_base_with_trainable_variables_is_named_in_a_warning(variable):
  # fit trains the model's Keras weights only: the base's variable stayed where it was.
  base = tfd.MultivariateNormalDiag(loc=variable())
  with pytest.warns(UserWarning, match="trainable variables.*fit leaves them.*GaussianPrior"):
    tff.FlowModel([tff.layers.ActNorm()], [2], base_distribution=base)


def test_a_fixed_base_gives_no_warning():
  bases = [tfd.MultivariateNormalDiag(loc=tf.Variable([0.0, 0.0], trainable=False)),
           tfd.MultivariateNormalDiag(tf.zeros(2)), _student_t_base()]
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    for base in bases:
      tff.FlowModel([tff.layers.ActNorm()], [2], base_distribution=base)
    config = tff.FlowModel([tff.layers.ActNorm()], [2]).get_config()
  # A standard base leaves the config as older versions read it.
  assert "custom_base" not in config


def _spline_flow(**kwargs):
  keras.utils.set_random_seed(0)
  arguments = {"event_shape": [2], "num_layers": 2, "hidden_units": (8,), **kwargs}
  return tff.models.NeuralSplineFlow(**arguments)


@pytest.mark.parametrize("other", [
    {"num_layers": 1}, {"num_layers": 3}, {"actnorm": False}, {"linear": "permute"},
    {"num_bins": 4}, {"hidden_units": (16,)}])
def test_weights_of_a_flow_built_differently_are_an_error(other, tmp_path):
  # Keras matches weights by layer path and skips what the model lacks: fewer layers,
  # no ActNorm or another linear layer loaded silently, up to 11 nats off.
  model = _spline_flow()
  for weight in model.trainable_weights:  # unlike the weights other_model starts from
    weight.assign(weight - 0.5)
  model.save_weights(tmp_path / "flow.weights.h5")
  other_model = _spline_flow(**other)
  before = [w.numpy() for w in other_model.weights]
  with pytest.raises(ValueError, match="saved from a flow built differently|shape"):
    other_model.load_weights(tmp_path / "flow.weights.h5")
  # Keras loads every layer that fits before it reports the error; none stays loaded.
  for weight, value in zip(other_model.weights, before):
    np.testing.assert_array_equal(weight.numpy(), value, err_msg=weight.path)
  same = _spline_flow()
  for weight in same.trainable_weights:
    weight.assign(weight + 0.5)
  same.load_weights(tmp_path / "flow.weights.h5")
  x = np.random.default_rng(0).normal(size=[8, 2]).astype("float32")
  np.testing.assert_array_equal(same.log_prob(x).numpy(), model.log_prob(x).numpy())


if __name__ == "__main__":
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
