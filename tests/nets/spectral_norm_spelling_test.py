"""SpectralNormDense / SpectralNormConv2D take `lipschitz` (the library's spelling of the
bound, that of `tff.layers.ResidualBlock` and `tff.models.ResidualFlow`) and the older
`coefficient`; `.keras` files written with `coefficient` still load.

The bound is checked against numpy's SVD of the layer's exact linear map
(`nets.spectral_norm_exact`): a kernel whose raw norm is above the bound is scaled to
norm `lipschitz` (the certified Gram iteration of evaluation calls over-contracts by at
most 1e-5), whichever spelling set it.
"""

import json
import os
import sys
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_flows import nets

# Written by tfp_flows before `lipschitz` (commit 92995b0, config key "coefficient"): after
# `keras.utils.set_random_seed(0)`, `keras.Sequential([keras.Input((4, 4, 1)),
# nets.SpectralNormConv2D(2, 3, coefficient=0.8, name="conv"), keras.layers.Flatten(),
# nets.SpectralNormDense(3, coefficient=0.7, name="dense")])`, weights moved by
# `tests.testing.flow_helpers.perturb_weights(model, scale=0.3)`. LEGACY_OUTPUT is that
# code's `model(LEGACY_X, training=False)`.
LEGACY_FILE = os.path.join(os.path.dirname(__file__), "testdata",
                           "legacy_spectral_norm.keras")
LEGACY_X = np.random.default_rng(4).normal(size=(2, 4, 4, 1)).astype(np.float32)
LEGACY_OUTPUT = np.array([[-0.08527967, 0.01261817, -0.25285846],
                          [0.51028824, -0.10804026, -0.07030772]], np.float32)

CASES = {
    "dense": (lambda **kw: nets.SpectralNormDense(4, name="sn", **kw), (None, 5)),
    "conv": (lambda **kw: nets.SpectralNormConv2D(2, 3, name="sn", **kw), (None, 4, 4, 2)),
}


def _built(case, **kwargs):
  make, shape = CASES[case]
  keras.utils.set_random_seed(0)
  layer = make(**kwargs)
  layer.build(shape)
  # A raw kernel of norm 3, far above every bound below.
  layer.kernel.assign(layer.kernel * (3.0 / nets.spectral_norm_exact(layer, normalized=False)))
  return layer, shape


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("spelling", ["lipschitz", "coefficient"])
def test_either_spelling_bounds_the_norm(case, spelling):
  layer, shape = _built(case, **{spelling: 0.6})
  assert layer.lipschitz == layer.coefficient == 0.6
  norm = nets.spectral_norm_exact(layer, training=False)
  assert 0.6 - 1e-5 <= norm <= 0.6 + 1e-6, norm  # not 0.97, the default
  config = layer.get_config()
  assert config["lipschitz"] == 0.6 and "coefficient" not in config
  assert config == CASES[case][0](lipschitz=0.6).get_config()
  x = tf.constant(np.random.default_rng(1).normal(size=(2, *shape[1:])).astype(np.float32))
  xla = tf.function(lambda v: layer(v, training=False), jit_compile=True)(x)
  np.testing.assert_allclose(xla.numpy(), layer(x, training=False).numpy(), rtol=0,
                             atol=1e-6)


def test_default_and_errors():
  layer, _ = _built("dense")
  assert layer.lipschitz == 0.97
  assert abs(nets.spectral_norm_exact(layer) - 0.97) <= 1e-5
  with pytest.raises(ValueError, match=r"lipschitz= and coefficient= are two spellings .* "
                                       r"Pass only lipschitz=\."):
    nets.SpectralNormDense(4, lipschitz=0.5, coefficient=0.5)
  with pytest.raises(ValueError, match=r"lipschitz must be in \(0, 1\).*got 1.0"):
    nets.SpectralNormConv2D(4, 3, lipschitz=1.0)
  with pytest.raises(ValueError, match=r"coefficient must be in \(0, 1\).*got 1.5"):
    nets.SpectralNormConv2D(4, 3, coefficient=1.5)


def _layer_configs(path):
  with zipfile.ZipFile(path) as archive:
    layers = json.loads(archive.read("config.json"))["config"]["layers"]
  return {layer["config"]["name"]: layer["config"] for layer in layers}


def test_keras_file_with_coefficient_still_loads(tmp_path):
  saved = _layer_configs(LEGACY_FILE)
  assert (saved["conv"]["coefficient"], saved["dense"]["coefficient"]) == (0.8, 0.7)
  assert "lipschitz" not in saved["conv"] and "lipschitz" not in saved["dense"]
  model = keras.saving.load_model(LEGACY_FILE)
  conv, dense = model.get_layer("conv"), model.get_layer("dense")
  assert (conv.lipschitz, dense.lipschitz) == (0.8, 0.7)
  output = model(LEGACY_X, training=False).numpy()
  np.testing.assert_allclose(output, LEGACY_OUTPUT, rtol=0, atol=1e-6)
  for layer, bound in ((conv, 0.8), (dense, 0.7)):
    raw = nets.spectral_norm_exact(layer, normalized=False)
    assert raw > bound  # so the normalised norm is the bound itself
    assert bound - 1e-5 <= nets.spectral_norm_exact(layer) <= bound + 1e-6
  path = str(tmp_path / "resaved.keras")
  model.save(path)
  resaved = _layer_configs(path)
  assert (resaved["conv"]["lipschitz"], resaved["dense"]["lipschitz"]) == (0.8, 0.7)
  assert "coefficient" not in resaved["conv"] and "coefficient" not in resaved["dense"]
  np.testing.assert_array_equal(keras.saving.load_model(path)(LEGACY_X, training=False),
                                output)


if __name__ == "__main__":
  # `main` of this file's py_test: under `bazel test` run the tests, not just the import.
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
