"""The generic `Coupling(transformer=...)` / `Autoregressive(transformer=...)` layers.

Checks that every transformer spec (instance, name, name + config) gives the same layer;
that the generic layers are bijective with the autodiff Jacobian's log-det in float64 and
equal under XLA; that the older classes (`AffineCoupling`, `AdditiveCoupling`,
`SplineCoupling`, `AffineAutoregressive`, `SplineAutoregressive`) compute exactly what the
generic layer with their transformer computes, keep their config keys, and that a
`.keras` file written by tfp_flows before the generic layers existed (commit f654cc4,
`testdata/legacy_layers.keras`, made by `_legacy_model` below after
`keras.utils.set_random_seed(0)` and `flow_helpers.perturb_weights(model, scale=0.3)`) still loads
with its weights and log-densities.
"""

import json
import os
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfp_flows as tff
from tfp_flows.layers import transformer_spec
from tests.testing import bijector_checks
from tests.testing import flow_helpers

bijectors = tff.bijectors
LEGACY_FILE = os.path.join(os.path.dirname(__file__), "testdata", "legacy_layers.keras")
# `_legacy_model().log_prob(LEGACY_X)` of the saved file, computed by the old code.
LEGACY_X = np.array([[0.3, -1.2, 0.7, 2.1], [-0.5, 0.4, -2.6, 0.05]], np.float32)
LEGACY_LOG_PROB = np.array([-8.051174, -9.820482], np.float32)


def _legacy_model(**layout):
  """One of each older layer over vectors of 4 (runs with the old and the new code).

  `layout`: `conditioner_layout=...` for the couplings; the file was written before the
  argument existed, by the code whose layout is now "dense".
  """
  return tff.FlowModel([
      tff.layers.AffineCoupling(scale="exp", clamp=2.5, hidden_units=(4,), **layout),
      tff.layers.AdditiveCoupling(reverse=True, hidden_units=(4,), **layout),
      tff.layers.SplineCoupling(num_bins=3, bound=2.5, mask="checkerboard",
                                hidden_units=(4,), **layout),
      tff.layers.AffineAutoregressive(scale="sigmoid", clamp=2.0, order="reversed",
                                      hidden_units=(4,)),
      tff.layers.SplineAutoregressive(num_bins=3, bound=3.0, circular=True,
                                      inverse_autoregressive=True, hidden_units=(4,)),
  ], event_shape=[4])


SPECS = {
    "affine": bijectors.AffineTransformer(),
    "additive": bijectors.AdditiveTransformer(),
    "rational_quadratic": bijectors.RationalQuadraticTransformer(),
    "circular_rational_quadratic": bijectors.CircularRationalQuadraticTransformer(),
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_spec_forms_give_one_transformer(name):
  instance = SPECS[name]
  config = {"name": name, "config": instance.get_config()}
  assert transformer_spec.get(name) == instance
  assert transformer_spec.get(config) == instance
  assert transformer_spec.get(instance) is instance
  assert transformer_spec.serialize(instance) == config
  # What get_config writes is plain JSON, as `.keras` stores it.
  assert json.loads(json.dumps(config)) == config


def test_spec_errors_say_what_to_pass():
  with pytest.raises(ValueError, match=r"Unknown transformer 'spline'; use one of"):
    transformer_spec.get("spline")
  with pytest.raises(ValueError, match="exactly the keys 'name' and 'config'"):
    transformer_spec.get({"name": "affine"})
  with pytest.raises(TypeError, match="must be a tfp_flows.bijectors.Transformer"):
    transformer_spec.get(3)
  with pytest.raises(ValueError, match="num_bins must be an integer"):
    tff.layers.Coupling({"name": "rational_quadratic", "config": {"num_bins": 2.5}})

  class Custom(bijectors.AdditiveTransformer):
    pass

  layer = tff.layers.Coupling(Custom())  # usable, but it cannot be written by name
  with pytest.raises(ValueError, match="Custom has no name in"):
    layer.get_config()


# (id, layer maker, whether the transformer preserves volume: log-det exactly 0)
GENERIC = [
    ("coupling_affine_exp", lambda: tff.layers.Coupling(
        bijectors.AffineTransformer("exp", 2.0), hidden_units=(6,), dtype="float64"), False),
    ("coupling_spline_checkerboard", lambda: tff.layers.Coupling(
        {"name": "rational_quadratic", "config": {"num_bins": 4, "bound": 2.0}},
        mask="checkerboard", hidden_units=(6,), dtype="float64"), False),
    ("autoregressive_additive", lambda: tff.layers.Autoregressive(
        "additive", order="reversed", hidden_units=(6,), dtype="float64"), True),
    ("autoregressive_spline_iaf", lambda: tff.layers.Autoregressive(
        bijectors.RationalQuadraticTransformer(num_bins=4, bound=2.0),
        inverse_autoregressive=True, hidden_units=(6,), dtype="float64"), False),
]


@pytest.mark.parametrize("make,volume_preserving", [g[1:] for g in GENERIC],
                         ids=[g[0] for g in GENERIC])
def test_generic_layer_is_bijective_with_autodiff_log_det(make, volume_preserving):
  keras.utils.set_random_seed(0)
  layer = make()
  layer.build((None, 3))
  flow_helpers.perturb_weights(layer, seed=2, scale=0.3)
  bijector = layer.bijector
  x = tf.constant(np.random.default_rng(3).uniform(-1.8, 1.8, (5, 3)), tf.float64)
  result = bijector_checks.assert_bijective_and_log_det(bijector, x, event_ndims=1)
  # The weights were perturbed: the layer is not the identity, so the check has teeth.
  assert np.max(np.abs(result["y"] - x.numpy())) > 1e-2
  assert (np.max(np.abs(result["fldj"])) == 0.0) == volume_preserving

  def density_direction(y):
    return bijector.inverse(y), bijector.inverse_log_det_jacobian(y, event_ndims=1)

  bijector_checks.assert_xla_matches_eager(density_direction, x, atol=1e-12)


# (older layer, its arguments, the generic layer's transformer for them)
ALIASES = [
    (tff.layers.AffineCoupling, {"scale": "exp", "clamp": 2.5}, tff.layers.Coupling,
     bijectors.AffineTransformer("exp", 2.5)),
    (tff.layers.AdditiveCoupling, {"reverse": True}, tff.layers.Coupling,
     bijectors.AdditiveTransformer()),
    (tff.layers.SplineCoupling, {"num_bins": 3, "bound": 2.5, "circular": True},
     tff.layers.Coupling, bijectors.CircularRationalQuadraticTransformer(num_bins=3, bound=2.5)),
    (tff.layers.AffineAutoregressive, {"scale": "sigmoid", "clamp": 2.0},
     tff.layers.Autoregressive, bijectors.AffineTransformer("sigmoid", 2.0)),
    (tff.layers.SplineAutoregressive, {"num_bins": 3, "order": "reversed"},
     tff.layers.Autoregressive, bijectors.RationalQuadraticTransformer(num_bins=3, bound=3.0)),
]


@pytest.mark.parametrize("legacy_cls,kwargs,generic_cls,transformer", ALIASES,
                         ids=[a[0].__name__ for a in ALIASES])
def test_older_layer_is_the_generic_layer_with_its_transformer(legacy_cls, kwargs,
                                                               generic_cls, transformer):
  legacy = legacy_cls(hidden_units=(5,), **kwargs)
  assert isinstance(legacy, generic_cls)
  assert legacy.transformer == transformer
  generic_kwargs = {k: v for k, v in kwargs.items()
                    if k not in ("scale", "clamp", "num_bins", "bound", "circular")}
  generic = generic_cls(transformer, hidden_units=(5,), **generic_kwargs)
  legacy.build((None, 4))
  generic.build((None, 4))
  flow_helpers.perturb_weights(legacy, scale=0.3)
  generic.set_weights(legacy.get_weights())
  x = tf.constant(np.random.default_rng(4).uniform(-2.0, 2.0, (6, 4)), tf.float32)
  z_legacy, ildj_legacy = legacy(x)
  z_generic, ildj_generic = generic(x)
  assert np.max(np.abs(z_legacy.numpy() - x.numpy())) > 1e-2  # not the identity
  np.testing.assert_array_equal(z_generic.numpy(), z_legacy.numpy())
  np.testing.assert_array_equal(ildj_generic.numpy(), ildj_legacy.numpy())

  # The older config keeps its own keys (no `transformer`) and rebuilds the same layer;
  # the generic config names the transformer and rebuilds it too.
  legacy_config = legacy.get_config()
  assert "transformer" not in legacy_config
  for key, value in kwargs.items():
    assert legacy_config[key] == value
  assert legacy_cls.from_config(legacy_config).transformer == transformer
  generic_config = generic.get_config()
  assert generic_config["transformer"] == transformer_spec.serialize(transformer)
  assert generic_cls.from_config(generic_config).transformer == transformer


def test_generic_layers_round_trip_through_keras_file(tmp_path):
  keras.utils.set_random_seed(0)
  model = tff.FlowModel([
      tff.layers.Coupling("affine", hidden_units=(4,)),
      tff.layers.Autoregressive({"name": "rational_quadratic",
                                 "config": {"num_bins": 3, "bound": 2.5}},
                                hidden_units=(4,), order="reversed"),
      tff.layers.Coupling(bijectors.CircularRationalQuadraticTransformer(num_bins=3),
                          reverse=True, hidden_units=(4,)),
  ], event_shape=[4])
  flow_helpers.perturb_weights(model, scale=0.3)
  path = str(tmp_path / "generic.keras")
  model.save(path)
  loaded = keras.models.load_model(path)
  assert [type(l) for l in loaded.flow_layers] == [type(l) for l in model.flow_layers]
  for original, restored in zip(model.flow_layers, loaded.flow_layers):
    assert restored.transformer == original.transformer
  expected = model.log_prob(LEGACY_X).numpy()
  assert np.all(np.isfinite(expected))
  np.testing.assert_array_equal(loaded.log_prob(LEGACY_X).numpy(), expected)


def test_keras_file_from_before_the_generic_layers_still_loads():
  with zipfile.ZipFile(LEGACY_FILE) as archive:
    saved = json.loads(archive.read("config.json"))
  saved_layers = saved["config"]["flow_layers"]
  assert all("transformer" not in layer["config"] for layer in saved_layers)

  loaded = keras.models.load_model(LEGACY_FILE)
  np.testing.assert_allclose(loaded.log_prob(LEGACY_X).numpy(), LEGACY_LOG_PROB,
                             rtol=1e-6)
  assert [type(l).__name__ for l in loaded.flow_layers] == [
      "AffineCoupling", "AdditiveCoupling", "SplineCoupling", "AffineAutoregressive",
      "SplineAutoregressive"]
  assert loaded.flow_layers[4].transformer == bijectors.CircularRationalQuadraticTransformer(
      num_bins=3, bound=3.0)
  assert [l.conditioner_layout for l in loaded.flow_layers[:3]] == ["dense"] * 3
  # The same layers built by the new code, given the file's weights, agree.
  rebuilt = _legacy_model(conditioner_layout="dense")
  rebuilt.set_weights(loaded.get_weights())
  np.testing.assert_allclose(rebuilt.log_prob(LEGACY_X).numpy(), LEGACY_LOG_PROB,
                             rtol=1e-6)
  # In the stacked layout each conditioner layer is [kernel; bias] in one weight.
  stacked = _legacy_model()
  for old_layer, new_layer in zip(loaded.flow_layers, stacked.flow_layers):
    if isinstance(old_layer, tff.layers.Coupling):
      weights = old_layer.net.get_weights()
      new_layer.net.set_weights([np.concatenate([kernel, bias[None]], 0)
                                 for kernel, bias in zip(weights[::2], weights[1::2])])
    else:
      new_layer.set_weights(old_layer.get_weights())
  np.testing.assert_allclose(stacked.log_prob(LEGACY_X).numpy(), LEGACY_LOG_PROB,
                             rtol=1e-6)


def test_a_loaded_file_keeps_its_conditioner_layout_when_saved_again(tmp_path):
  loaded = keras.models.load_model(LEGACY_FILE)
  path = str(tmp_path / "again.keras")
  loaded.save(path)
  again = keras.models.load_model(path)
  assert [l.conditioner_layout for l in again.flow_layers[:3]] == ["dense"] * 3
  np.testing.assert_allclose(again.log_prob(LEGACY_X).numpy(), LEGACY_LOG_PROB, rtol=1e-6)
