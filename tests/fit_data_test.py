"""`fit` on arrays: Keras' batches and shuffling, from a pipeline without autotuning.

The defect: with Keras' own array pipeline, tf.data's autotuner took compute threads
from the training step on a 2-core machine, and whole epochs ran on one core (0.52x
the steps/s; benchmarks/RESULTS.md). Speed is measured in benchmarks, not here; these
tests pin the pipeline `fit` uses for arrays and check that it trains on exactly what
Keras' would.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfp_flows as tff
from tfp_flows import fit_data


def _model(conditional=False):
  keras.utils.set_random_seed(0)
  return tff.FlowModel(
      [tff.layers.AffineCoupling(hidden_units=(8,), conditional=conditional),
       tff.layers.AffineCoupling(hidden_units=(8,), reverse=True, conditional=conditional)],
      [2], context_shape=[1] if conditional else None)


def _data(rows=200, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=[rows, 2]).astype("float32")
  return x, (x[:, :1] * 2.0).astype("float32")


def _weights(model):
  return [w.numpy() for w in model.weights]


def test_arrays_train_exactly_as_the_same_batches_through_keras_under_xla():
  x, _ = _data()
  ours, reference = _model(), _model()
  for model in (ours, reference):
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True)
  history = ours.fit(x, batch_size=64, epochs=2, shuffle=False, verbose=0).history
  keras_history = reference.fit(tf.data.Dataset.from_tensor_slices(x).batch(64), epochs=2,
                                shuffle=False, verbose=0).history
  # 200 rows in batches of 64: three full batches and one of 8, in order, each epoch.
  np.testing.assert_allclose(history["nll"], keras_history["nll"], rtol=1e-6)
  for got, expected in zip(_weights(ours), _weights(reference)):
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
  assert not np.allclose(_weights(ours)[0], _weights(_model())[0])


def test_shuffled_epochs_are_fresh_permutations_with_context_rows_kept_paired():
  x, context = _data(rows=23)
  dataset = fit_data.array_dataset((x, context), batch_size=5, shuffle=True)
  orders = []
  for _ in range(2):
    batches = list(dataset)
    assert [int(b[0].shape[0]) for b in batches] == [5, 5, 5, 5, 3]
    rows = np.concatenate([b[0].numpy() for b in batches])
    paired = np.concatenate([b[1].numpy() for b in batches])
    np.testing.assert_array_equal(paired, rows[:, :1] * 2.0)
    order = [int(np.flatnonzero((x == row).all(1))[0]) for row in rows]
    assert sorted(order) == list(range(23))
    orders.append(order)
  assert orders[0] != orders[1]


def test_the_pipeline_runs_without_autotuning_and_fit_uses_it_for_arrays(monkeypatch):
  x, context = _data()
  assert fit_data.array_dataset((x,), 32, False).options().autotune.enabled is False
  assert tf.data.Dataset.range(3).options().autotune.enabled is not False
  assert fit_data.without_autotuning(
      tf.data.Dataset.range(3)).options().autotune.enabled is False
  built = []
  original = fit_data.array_dataset
  monkeypatch.setattr(fit_data, "array_dataset",
                      lambda *args: built.append(args[1:]) or original(*args))
  model = _model(conditional=True)
  model.compile(optimizer="adam")
  model.fit(x, context, batch_size=50, epochs=1, verbose=0)
  assert built == [(50, True)]
  # Arguments only Keras' array path handles keep it.
  history = model.fit(x, context, epochs=1, validation_split=0.25, verbose=0).history
  model.fit(x, context, epochs=1, steps_per_epoch=2, verbose=0)
  assert built == [(50, True)] and "val_nll" in history


def test_shuffled_fits_repeat_under_one_seed():
  x, _ = _data()
  results = []
  for _ in range(2):
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(x, batch_size=32, epochs=2, verbose=0)
    results.append(_weights(model))
  for first, second in zip(*results):
    np.testing.assert_array_equal(first, second)


def test_bad_arrays_are_clear_errors():
  x, context = _data()
  with pytest.raises(ValueError, match="same number of rows"):
    fit_data.array_dataset((x, context[:10]), 8, True)
  with pytest.raises(ValueError, match="batch_size must be a positive int"):
    fit_data.array_dataset((x,), 0, True)


def test_a_data_free_objective_reads_its_placeholder_without_autotuning(monkeypatch):
  # VI fit (spe=200) ran 1,175-1,218 steps/s in five runs with the placeholder stream
  # untuned, against 635-1,183 with it autotuned (benchmarks/RESULTS.md).
  tuned = []
  original = fit_data.without_autotuning
  monkeypatch.setattr(fit_data, "without_autotuning",
                      lambda dataset: tuned.append(dataset) or original(dataset))
  keras.utils.set_random_seed(0)
  target = tff.distributions.PhiloxNormal([1.0, -1.0], 1.0)
  model = tff.FlowModel(
      [tff.layers.AffineCoupling(hidden_units=(8,))], [2],
      objective=tff.objectives.ReverseKL(lambda z: tf.reduce_sum(target.log_prob(z), -1),
                                         num_samples=8, seed=1))
  model.compile(optimizer="adam")
  history = model.fit(epochs=1, steps_per_epoch=3, verbose=0).history
  assert len(tuned) == 1 and np.isfinite(history["loss"][0])


def test_arrays_without_rows_or_a_row_axis_are_clear_errors():
  # fit(empty) failed in tf.data ("buffer_size must be greater than zero"), or with
  # shuffle=False returned an empty history; evaluate returned []; predict raised Keras'
  # UnboundLocalError. A [N] array for a 2-D flow failed on an iterator's shape.
  model = tff.models.NeuralSplineFlow(event_shape=[2], num_blocks=1, hidden_units=(4,))
  model.compile(keras.optimizers.Adam(1e-2))
  empty, flat = np.zeros([0, 2], "float32"), np.zeros([64], "float32")
  for shuffle in (True, False):
    with pytest.raises(ValueError, match=r"fit got no rows to train on: x has shape \[0, 2\]"):
      model.fit(empty, shuffle=shuffle, verbose=0)
  with pytest.raises(ValueError, match="evaluate got no rows to score"):
    model.evaluate(empty, verbose=0)
  for call in (model.fit, model.evaluate):
    with pytest.raises(ValueError, match=r"takes points of event_shape \[2\] along a first "
                                         r"axis of rows, \[N, 2\]; got x of shape \[64\]"):
      call(flat, verbose=0)
  assert model.predict(empty, verbose=0).shape == (0,)
  assert model.predict(np.zeros([0, 3, 2], "float32"), verbose=0).shape == (0, 3)
  assert model.predict(np.ones([5, 2], "float32"), verbose=0).shape == (5,)


def test_a_dataset_of_single_points_is_an_error():
  # Keras passed each point on as a batch: one point per step, batch_size ignored, and
  # a [N] array of scalars batched by 2 trained a 2-D flow on pairs of them.
  model = tff.models.NeuralSplineFlow(event_shape=[2], num_blocks=1, hidden_units=(4,))
  model.compile(keras.optimizers.Adam(1e-2))
  x = np.random.default_rng(0).normal(size=[64, 2]).astype("float32")
  context_free = tf.data.Dataset.from_tensor_slices(x)
  pairs = tf.data.Dataset.from_tensor_slices(x[:, 0]).batch(2)
  for dataset in (context_free, pairs, tf.data.Dataset.from_tensor_slices((x,))):
    for call in (model.fit, model.evaluate, model.predict):
      with pytest.raises(ValueError, match=r"got a dataset of single points .* batch it"):
        call(dataset, verbose=0)
  model.fit(context_free.batch(16), verbose=0)


def test_a_dataset_of_dicts_or_ragged_batches_is_a_clear_error():
  model = tff.models.NeuralSplineFlow(event_shape=[2], num_blocks=1, hidden_units=(4,))
  model.compile(keras.optimizers.Adam(1e-2))
  x = np.random.default_rng(0).normal(size=[8, 2]).astype("float32")
  dicts = tf.data.Dataset.from_tensor_slices({"x": x}).batch(4)
  ragged = tf.data.Dataset.from_tensors(tf.ragged.constant([[0.1, 0.2], [0.3]])).repeat(2)
  for dataset in (dicts, ragged):
    for call in (model.fit, model.evaluate, model.predict):
      with pytest.raises(ValueError, match=r"takes a dataset of dense batches x or"):
        call(dataset, verbose=0)


def test_validation_data_is_checked_before_the_first_epoch():
  model = tff.models.NeuralSplineFlow(event_shape=[2], num_blocks=1, hidden_units=(4,))
  model.compile(keras.optimizers.Adam(1e-1))
  x = np.random.default_rng(0).normal(size=[64, 2]).astype("float32")
  model.log_prob(x)
  weights = [w.numpy().copy() for w in model.weights]
  for validation, message in ((tf.data.Dataset.from_tensor_slices(x), "single points"),
                              ((x[:0],), "no rows"), ((x[:, 0],), "first axis of rows")):
    with pytest.raises(ValueError, match=rf"fit's validation_data .*{message}|"
                                         rf"fit's validation_data got {message}"):
      model.fit(x, validation_data=validation, verbose=0)
  for weight, old in zip(model.weights, weights):
    np.testing.assert_array_equal(weight.numpy(), old)


def test_predict_of_no_rows_still_checks_the_event_shape():
  model = tff.models.NeuralSplineFlow(event_shape=[3], num_blocks=1, hidden_units=(4,))
  with pytest.raises(ValueError, match=r"takes points of event_shape \[3\]"):
    model.predict(np.zeros([0, 5], "float32"), verbose=0)
  with pytest.raises(ValueError, match=r"takes points of event_shape \[3\] along a first"):
    model.predict(np.array(1.0, "float32"), verbose=0)
