"""Arrays that Keras' own data path reads keep a float64 model's precision.

Keras' array adapter casts float arrays to floatx when it slices them. A float64 model
in a float32 process (`dtype="float64"`) scored `evaluate(x)`, `predict(x)`, validation
arrays and `fit` with `validation_split` or `steps_per_epoch` on data rounded to float32:
around 1e9, float32's spacing is 64, so once ActNorm has standardised the data to unit
scale the rounded rows (all of which round to 1e9 itself) land standard deviations away.
"""

import keras
import numpy as np
import pytest

import tfp_flows as tff

X = 1e9 + np.random.default_rng(0).normal(size=(256, 3))


def _trained_model(**fit_kwargs):
  keras.utils.set_random_seed(0)
  model = tff.models.NeuralSplineFlow(event_shape=[3], num_blocks=1, hidden_units=(4,),
                                      dtype="float64")
  model.compile(optimizer=keras.optimizers.Adam(1e-3))
  history = model.fit(X, batch_size=128, epochs=1, verbose=0, **fit_kwargs)
  return model, history


def test_evaluate_and_predict_read_float64_arrays_in_float64():
  assert keras.config.floatx() == "float32"
  model, _ = _trained_model()
  log_prob = model.log_prob(X).numpy()
  assert np.all(np.isfinite(log_prob))
  np.testing.assert_allclose(model.predict(X, batch_size=64, verbose=0), log_prob,
                             rtol=1e-12)
  # Keras' loss tracker sums in float32.
  np.testing.assert_allclose(model.evaluate(X, batch_size=64, verbose=0),
                             -np.mean(log_prob), rtol=1e-6)
  assert keras.config.floatx() == "float32"


@pytest.mark.parametrize("fit_kwargs", [
    {"validation_split": 0.5},
    {"validation_data": (X[128:],)},
    {"steps_per_epoch": 2},
], ids=["validation_split", "validation_data", "steps_per_epoch"])
def test_keras_array_paths_of_fit_read_float64_arrays_in_float64(fit_kwargs):
  model, history = _trained_model(**fit_kwargs)
  assert keras.config.floatx() == "float32"
  held_out = X[128:]
  if "val_loss" in history.history:
    np.testing.assert_allclose(history.history["val_loss"][-1],
                               -np.mean(model.log_prob(held_out).numpy()), rtol=1e-6)
  # The epoch's training loss is the data's negative log-density, up to an epoch of
  # small steps (2.75 on the rounded data against 4.25 here before the fix).
  trained_on = X[:128] if "validation_split" in fit_kwargs else X
  np.testing.assert_allclose(history.history["loss"][-1],
                             -np.mean(model.log_prob(trained_on).numpy()), atol=0.05)
