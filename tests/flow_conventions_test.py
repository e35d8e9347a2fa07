"""FlowModel follows Keras' conventions: `loss` / `val_loss` logged, stock callbacks act.

The callback tests use a flow whose training dynamics are known in closed form: one
ActNorm without data initialisation (data ~ N(loc, e^{2s})), trained by SGD on data
centred at 3 while the validation data are centred at 0, so the first epoch's
`val_loss` (the untrained model, N(0, I)) is the best one. Each epoch
is a single full batch (no shuffling noise).
"""

import json
import math
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

import tfp_flows as tff


@pytest.fixture(autouse=True)
def _seed():
  keras.utils.set_random_seed(0)


def _data(centre, n=32, seed=0):
  return (centre + np.random.default_rng(seed).normal(size=(n, 2))).astype("float32")


def _diverging_run(callback, epochs, learning_rate=0.1):
  """Fits N(loc, e^{2s}) from loc = 0, s = 0 to data at 3 while validating at 0."""
  model = tff.FlowModel([tff.layers.ActNorm(data_init=False)], [2])
  model.compile(optimizer=keras.optimizers.SGD(learning_rate))
  history = model.fit(_data(3.0), batch_size=32, epochs=epochs, verbose=0,
                      validation_data=(_data(0.0, seed=1),), callbacks=[callback])
  return model, history.history


def test_loss_and_val_loss_are_the_nll_without_layer_losses():
  model = tff.FlowModel([tff.layers.ActNorm(data_init=False)], [2])
  model.compile(optimizer=keras.optimizers.SGD(0.1))
  x_train, x_val = _data(3.0), _data(0.0, seed=1)
  # One step per epoch: the epoch's logged training loss is the NLL at the weights
  # before its step, N(0, I) for the first epoch.
  expected_first = -scipy.stats.norm.logpdf(x_train.astype(np.float64)).sum(-1).mean()
  history = model.fit(x_train, batch_size=32, epochs=2, verbose=0,
                      validation_data=(x_val,)).history
  assert {"loss", "val_loss", "nll", "val_nll"} <= set(history)
  np.testing.assert_allclose(history["loss"][0], expected_first, rtol=1e-6)
  np.testing.assert_allclose(history["loss"], history["nll"], rtol=1e-6)
  np.testing.assert_allclose(history["val_loss"][-1], -model.log_prob(x_val).numpy().mean(),
                             rtol=1e-6)
  results = model.evaluate(x_val, batch_size=8, verbose=0, return_dict=True)
  np.testing.assert_allclose(results["loss"], -model.log_prob(x_val).numpy().mean(),
                             rtol=1e-6)


def test_loss_includes_the_layers_keras_losses():
  # FFJORD's kinetic-energy regulariser is a Keras layer loss: `loss` is the objective
  # actually minimised, nll + 0.5 * mean kinetic energy; `nll` stays the likelihood.
  model = tff.models.FFJORDFlow([2], hidden_units=(8,), actnorm=False, trace="exact",
                                solver="rk4", num_steps=2, gradient="backprop",
                                kinetic_weight=0.5)
  for weight in model.flow_layers[-1].net.trainable_weights:  # a non-zero field
    weight.assign(0.5 * np.random.default_rng(2).normal(size=weight.shape))
  x = _data(1.0, n=16)
  log_prob = model(x, training=True)
  regulariser = float(sum(model.losses))
  nll = -float(np.mean(log_prob))
  assert regulariser > 1e-3
  model.compile(optimizer=keras.optimizers.SGD(1e-3))
  history = model.fit(x, batch_size=16, epochs=1, verbose=0).history
  np.testing.assert_allclose(history["nll"][0], nll, rtol=1e-5)
  np.testing.assert_allclose(history["loss"][0], nll + regulariser, rtol=1e-5)


def test_early_stopping_with_its_defaults_stops_when_val_loss_stops_improving():
  # EarlyStopping(patience=2) monitors val_loss: epoch 0 is the best, epochs 1 and 2
  # are worse, so it stops after epoch 2 of 20.
  callback = keras.callbacks.EarlyStopping(patience=2)
  assert callback.monitor == "val_loss"
  _, history = _diverging_run(callback, epochs=20)
  assert min(history["val_loss"][1:]) > history["val_loss"][0], history["val_loss"]
  assert len(history["loss"]) == 3
  assert callback.stopped_epoch == 2


def test_reduce_lr_on_plateau_with_its_defaults_lowers_the_learning_rate():
  # Defaults: monitor val_loss, patience 10, factor 0.1. val_loss is best at epoch 0,
  # so the 10th epoch without improvement (epoch 10) divides the rate by 10, once.
  callback = keras.callbacks.ReduceLROnPlateau()
  model, history = _diverging_run(callback, epochs=12)
  assert min(history["val_loss"][1:]) > history["val_loss"][0] + 1e-4, history["val_loss"]
  np.testing.assert_allclose(float(model.optimizer.learning_rate.numpy()), 0.01, rtol=1e-6)


def test_model_checkpoint_saves_when_val_loss_improves(tmp_path):
  # Validation data at 1.5 while training moves loc from 0 towards 3: val_loss falls,
  # then rises. save_best_only with the default monitor (val_loss) writes a file at
  # exactly the epochs that set a new minimum, and the last one reloads to that model.
  model = tff.FlowModel([tff.layers.ActNorm(data_init=False)], [2])
  model.compile(optimizer=keras.optimizers.SGD(0.03))
  x_val = _data(1.5, seed=1)
  path = os.path.join(tmp_path, "best_{epoch}.keras")
  callback = keras.callbacks.ModelCheckpoint(path, save_best_only=True)
  assert callback.monitor == "val_loss"
  history = model.fit(_data(3.0), batch_size=32, epochs=8, verbose=0,
                      validation_data=(x_val,), callbacks=[callback]).history
  val_loss = np.array(history["val_loss"])
  improved = [epoch for epoch in range(len(val_loss))
              if val_loss[epoch] < val_loss[:epoch].min(initial=math.inf)]
  assert 2 <= len(improved) < len(val_loss), val_loss
  written = sorted(int(name[len("best_"):-len(".keras")]) for name in os.listdir(tmp_path))
  assert written == [epoch + 1 for epoch in improved]
  best = keras.saving.load_model(path.format(epoch=improved[-1] + 1))
  np.testing.assert_allclose(-best.log_prob(x_val).numpy().mean(), val_loss.min(),
                             rtol=1e-6)


def _batch_nlls(x, batch):
  """Each batch's mean NLL under N(0, I), float64."""
  nll = -scipy.stats.norm.logpdf(x.astype(np.float64)).sum(-1)
  return nll.reshape(-1, batch).mean(-1)


def test_loss_max_is_the_largest_step_loss_of_each_epoch():
  # At learning rate 0 the model stays N(0, I), so every step loss is a closed form.
  # Epoch 1 holds a batch far from the data (shifted by 6): its loss is the epoch's
  # maximum, more than 3x the epoch mean, which hides it. Epoch 2 (the next 4
  # batches, all near the data) starts a new maximum.
  x = _data(0.0, n=64)
  x[16:24] += 6.0
  expected = _batch_nlls(x, 8)
  model = tff.FlowModel([tff.layers.ActNorm(data_init=False)], [2])
  model.compile(optimizer=keras.optimizers.SGD(0.0))
  dataset = tf.data.Dataset.from_tensor_slices(x).batch(8)
  history = model.fit(dataset, epochs=2, steps_per_epoch=4, shuffle=False,
                      verbose=0).history
  np.testing.assert_allclose(history["loss_max"], [expected[:4].max(), expected[4:].max()],
                             rtol=1e-6)
  np.testing.assert_allclose(history["loss"], [expected[:4].mean(), expected[4:].mean()],
                             rtol=1e-6)
  assert history["loss_max"][0] > 3 * history["loss"][0]
  assert history["loss_max"][1] < 2 * history["loss"][1]


_MIRRORED = textwrap.dedent("""
    import json
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import tfp_flows as tff

    x = (np.random.default_rng(0).normal(size=(32, 2))).astype("float32")
    x[8:16] += 6.0  # the second replica's half of the first global batch
    with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
      model = tff.FlowModel([tff.layers.ActNorm(data_init=False)], [2])
      model.compile(optimizer=keras.optimizers.SGD(0.0))
    history = model.fit(x, batch_size=16, epochs=1, shuffle=False, verbose=0).history
    print(json.dumps({"x": x.tolist(), "loss": history["loss"],
                      "loss_max": history["loss_max"]}))
""")


def test_loss_max_under_mirrored_strategy_is_the_global_batch_loss():
  # Each replica sees half of a global batch; the logged maximum is over global
  # batches (the replicas' losses averaged), not over one replica's halves.
  result = subprocess.run([sys.executable, "-c", _MIRRORED], capture_output=True,
                          text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  assert result.returncode == 0, result.stderr[-3000:]
  logs = json.loads(result.stdout.strip().splitlines()[-1])
  expected = _batch_nlls(np.array(logs["x"], np.float32), 16)
  np.testing.assert_allclose(logs["loss_max"], [expected.max()], rtol=1e-6)
  np.testing.assert_allclose(logs["loss"], [expected.mean()], rtol=1e-6)


@pytest.mark.parametrize("option", [{"loss": "mse"}, {"metrics": ["mae"]},
                                    {"weighted_metrics": ["mae"]}, {"loss_weights": [1.0]}])
def test_compile_options_that_score_targets_are_an_error(option):
  # Keras accepts them, and fit never used them: a flow trains on its objective.
  model = tff.FlowModel([tff.layers.ActNorm()], [2])
  with pytest.raises(ValueError, match=f"takes no {next(iter(option))}.*objective"):
    model.compile(optimizer="adam", **option)


def test_a_reload_compiles_with_the_saved_optimizer_and_loop_options(tmp_path):
  model = tff.FlowModel([tff.layers.ActNorm(), tff.layers.AffineCoupling()], [2])
  model.compile(optimizer=keras.optimizers.Adam(0.01), jit_compile=True,
                steps_per_execution=2)
  model.fit(_data(3.0, n=64), batch_size=16, epochs=1, verbose=0)
  model.save(tmp_path / "flow.keras")
  loaded = keras.models.load_model(tmp_path / "flow.keras")
  assert loaded.compiled and loaded.jit_compile and loaded.steps_per_execution == 2
  assert isinstance(loaded.optimizer, keras.optimizers.Adam)
  assert loaded.optimizer.iterations.numpy() == 4
  np.testing.assert_allclose(loaded.optimizer.learning_rate.numpy(), 0.01)
  for saved, restored in zip(model.optimizer.variables, loaded.optimizer.variables):
    np.testing.assert_array_equal(saved.numpy(), restored.numpy())


def test_compile_takes_keras_arguments_that_name_nothing():
  # Generic code passes empty containers for "none", and Keras' options positionally.
  model = tff.FlowModel([tff.layers.ActNorm()], [2])
  model.compile("adam", None, None, [], {}, False, 3, False)
  assert model.steps_per_execution == 3 and not model.jit_compile
  model.compile(optimizer="sgd", loss={}, metrics=(), auto_scale_loss=False)
  assert isinstance(model.optimizer, keras.optimizers.SGD)


def _unregistered_metric(y_true, y_pred):
  return keras.ops.mean(y_pred - y_true)


def test_a_file_naming_a_compile_loss_loads_without_it(tmp_path):
  """Files written while `compile(loss=...)` was accepted (and ignored) still load, also
  when the metric they name is a function the loading process does not have."""
  model = tff.FlowModel([tff.layers.ActNorm()], [2])
  keras.Model.compile(model, optimizer="adam", loss="mse",
                      metrics=["mae", _unregistered_metric])
  model.fit(_data(3.0), batch_size=16, epochs=1, verbose=0)
  model.save(tmp_path / "flow.keras")
  with pytest.warns(UserWarning, match="names loss, metrics: a flow does not use them"):
    loaded = keras.models.load_model(tmp_path / "flow.keras")
  assert loaded.compiled and loaded.optimizer.iterations.numpy() == 2
  history = loaded.fit(_data(3.0), batch_size=16, epochs=1, verbose=0)
  assert sorted(history.history) == ["loss", "loss_max", "nll"]


if __name__ == "__main__":
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
