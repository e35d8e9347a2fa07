"""Tests of tfp_flows.nets.MADE: the autoregressive property, zero init, saving, XLA."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_flows import nets

D = 5
P = 3
C = 2
# np.random.default_rng(0).permutation(5): neither natural nor reversed.
RANDOM_ORDER = [2, 4, 3, 0, 1]


def _randomise(layer, seed=0):
  """Random values in every weight: the output layer starts at zero, hiding dependencies."""
  rng = np.random.default_rng(seed)
  for w in layer.weights:
    w.assign(rng.normal(scale=0.7, size=w.shape).astype(w.dtype))


def _jacobians(made, x, context=None):
  """d out / d x as [B, D, P, D] and d out / d context as [B, D, P, C] (or None)."""
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(x)
    if context is not None:
      tape.watch(context)
    out = made(x, context)
  jx = tape.batch_jacobian(out, x).numpy()
  jc = None if context is None else tape.batch_jacobian(out, context).numpy()
  return out, jx, jc


@pytest.mark.parametrize("order, hidden_units, with_context", [
    ("natural", (16, 16), False),
    ("reversed", (16, 16), False),
    ("random", (16, 16), False),
    ([1, 3, 0, 4, 2], (16, 16), False),
    ("random", (16, 16), True),
    ([1, 3, 0, 4, 2], (16,), True),
    ("natural", (), False),     # a masked linear map
    ("natural", (), True),
    ("reversed", (2, 3), False),  # narrower than D - 1: fewer paths, still autoregressive
])
def test_autoregressive_property(order, hidden_units, with_context):
  made = nets.MADE(D, P, hidden_units=hidden_units, activation="tanh", order=order, seed=0,
                   context_units=C if with_context else None)
  made.build((None, D), (None, C) if with_context else None)
  _randomise(made)
  positions = np.asarray(made.order)
  named = {"natural": [0, 1, 2, 3, 4], "reversed": [4, 3, 2, 1, 0], "random": RANDOM_ORDER}
  assert made.order == (named[order] if isinstance(order, str) else order)

  x = tf.random.stateless_normal([4, D], seed=[1, 2], dtype=tf.float32)
  context = (tf.random.stateless_normal([4, C], seed=[3, 4]) if with_context else None)
  out, jx, jc = _jacobians(made, x, context)
  assert out.shape == (4, D, P)
  # allowed[i, j]: output row i may depend on input j.
  allowed = positions[None, :] < positions[:, None]
  magnitude = np.abs(jx).sum(axis=(0, 2))  # [D (output i), D (input j)]
  np.testing.assert_array_equal(magnitude[~allowed], 0.0)
  if hidden_units != (2, 3):
    # Every hidden degree 1..D-1 is present, so every allowed dependency is realised.
    assert np.all(magnitude[allowed] > 1e-6), magnitude
  else:
    assert np.count_nonzero(magnitude[allowed]) > 0
  # The row at position 0 depends on no input; the input at position D-1 feeds no row.
  np.testing.assert_array_equal(magnitude[int(np.argmin(positions)), :], 0.0)
  np.testing.assert_array_equal(magnitude[:, int(np.argmax(positions))], 0.0)
  assert np.count_nonzero(magnitude) <= D * (D - 1) // 2
  if with_context:
    # Every row, the first in the ordering included, depends on the context.
    assert np.all(np.abs(jc).sum(axis=(0, 2, 3)) > 1e-6), np.abs(jc).sum(axis=(0, 2, 3))


def test_output_starts_at_zero_and_has_batch_dims():
  made = nets.MADE(D, P, hidden_units=(8, 8), order="random", seed=3, context_units=C)
  x = tf.random.stateless_normal([3, 5, D], seed=[5, 6])
  context = tf.random.stateless_normal([3, 5, C], seed=[7, 8])
  out = made(x, context)
  assert tuple(out.shape) == (3, 5, D, P)
  np.testing.assert_array_equal(out.numpy(), np.zeros([3, 5, D, P], np.float32))
  _randomise(made)
  out = made(x, context).numpy()
  assert np.all(np.abs(out) > 0.0)
  # Batch entries are independent: row (1, 2) alone gives the same numbers.
  np.testing.assert_allclose(made(x[1:2, 2:3], context[1:2, 2:3]).numpy()[0, 0], out[1, 2],
                             rtol=1e-6, atol=1e-6)


def test_context_changes_outputs():
  made = nets.MADE(D, P, hidden_units=(16,), seed=0)
  x = tf.random.stateless_normal([2, D], seed=[9, 10])
  made(x, tf.zeros([2, C]))  # context_units inferred from the first call
  assert made.context_units == C
  _randomise(made)
  a = made(x, tf.zeros([2, C])).numpy()
  b = made(x, tf.ones([2, C])).numpy()
  assert np.all(np.abs(a - b).max(axis=(0, 2)) > 1e-4)  # every output row moved


def test_event_size_one_depends_on_context_only():
  made = nets.MADE(1, 2, hidden_units=(4,), context_units=C)
  made.build((None, 1), (None, C))
  _randomise(made)
  x = tf.constant([[0.3], [-1.2]])
  context = tf.constant([[1.0, 2.0], [0.5, -0.5]])
  _, jx, jc = _jacobians(made, x, context)
  np.testing.assert_array_equal(jx, 0.0)
  assert np.abs(jc).sum() > 1e-3
  plain = nets.MADE(1, 2, hidden_units=(4,))
  plain.build((None, 1))
  _randomise(plain)
  out, jx, _ = _jacobians(plain, x)
  np.testing.assert_array_equal(jx, 0.0)
  np.testing.assert_array_equal(out[0], out[1])  # a constant, learnt through the biases
  assert np.abs(out.numpy()).max() > 1e-3


def test_float64():
  made = nets.MADE(3, 2, hidden_units=(6,), dtype="float64")
  out = made(tf.ones([2, 3], tf.float64))
  assert out.dtype == tf.float64
  assert all(w.dtype == "float64" for w in made.weights)


def _conditional_model(made):
  x = keras.Input((D,))
  c = keras.Input((C,))
  return keras.Model([x, c], made(x, c))


def test_keras_round_trip_random_order(tmp_path):
  made = nets.MADE(D, P, hidden_units=(8, 8), order="random", context_units=C)  # seed None
  model = _conditional_model(made)
  _randomise(made, seed=4)
  x = np.random.default_rng(1).normal(size=(6, D)).astype(np.float32)
  c = np.random.default_rng(2).normal(size=(6, C)).astype(np.float32)
  before = model.predict([x, c], verbose=0)
  assert np.abs(before).max() > 0.1
  path = str(tmp_path / "made.keras")
  model.save(path)
  loaded = keras.saving.load_model(path)
  loaded_made = [layer for layer in loaded.layers if isinstance(layer, nets.MADE)][0]
  assert loaded_made.order == made.order
  for a, b in zip(loaded_made._masks(), made._masks()):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(loaded.predict([x, c], verbose=0), before)


def test_keras_round_trip_sequential(tmp_path):
  made = nets.MADE(D, P, hidden_units=(8,), order="random", seed=7)
  model = keras.Sequential([keras.Input((D,)), made])
  _randomise(made, seed=5)
  x = np.random.default_rng(3).normal(size=(4, D)).astype(np.float32)
  before = model.predict(x, verbose=0)
  path = str(tmp_path / "seq.keras")
  model.save(path)
  loaded = keras.saving.load_model(path)
  assert loaded.layers[0].order == made.order
  np.testing.assert_array_equal(loaded.predict(x, verbose=0), before)


def test_config_round_trip():
  made = nets.MADE(D, P, hidden_units=(8, 4), activation="tanh", order="random", seed=0,
                   context_units=C, name="made")
  config = made.get_config()
  assert config["order"] == RANDOM_ORDER
  assert config["hidden_units"] == [8, 4]
  assert (config["event_size"], config["params_per_dim"], config["context_units"],
          config["seed"], config["activation"]) == (D, P, C, 0, "tanh")
  clone = nets.MADE.from_config(config)
  assert clone.get_config() == config
  assert clone.order == made.order
  x = tf.random.stateless_normal([3, D], seed=[11, 12])
  context = tf.random.stateless_normal([3, C], seed=[13, 14])
  made(x, context)
  clone(x, context)
  _randomise(made, seed=6)
  clone.set_weights(made.get_weights())
  np.testing.assert_array_equal(clone(x, context).numpy(), made(x, context).numpy())


def test_xla_equals_eager():
  made = nets.MADE(D, P, hidden_units=(16, 16), order="reversed", context_units=C)
  x = tf.random.stateless_normal([8, D], seed=[15, 16])
  context = tf.random.stateless_normal([8, C], seed=[17, 18])
  made(x, context)
  _randomise(made, seed=8)
  eager = made(x, context).numpy()
  compiled = tf.function(lambda a, b: made(a, b), jit_compile=True)
  np.testing.assert_allclose(compiled(x, context).numpy(), eager, rtol=1e-5, atol=1e-5)
  # Unknown batch size in the graph: the output reshape uses dynamic leading dims.
  dynamic = tf.function(lambda a, b: made(a, b), jit_compile=True, input_signature=[
      tf.TensorSpec([None, D]), tf.TensorSpec([None, C])])
  np.testing.assert_allclose(dynamic(x, context).numpy(), eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(event_size=0, params_per_dim=2), r"event_size must be a positive int; got 0"),
    (dict(event_size=2.5, params_per_dim=2), r"event_size .* got 2\.5"),
    (dict(event_size=3, params_per_dim=0), r"params_per_dim must be a positive int; got 0"),
    (dict(event_size=3, params_per_dim=2, hidden_units=(8, 0)), r"hidden_units .* got 0"),
    (dict(event_size=3, params_per_dim=2, hidden_units=8), r"hidden_units .* got 8"),
    (dict(event_size=3, params_per_dim=2, context_units=-1), r"context_units .* got -1"),
    (dict(event_size=3, params_per_dim=2, order="sideways"), r"order must be one of .*"
                                                             r"got 'sideways'"),
    (dict(event_size=3, params_per_dim=2, order=[0, 0, 1]), r"permutation of range\(3\).*"
                                                            r"got \[0, 0, 1\]"),
    (dict(event_size=3, params_per_dim=2, order=[0, 1]), r"got \[0, 1\]"),
    (dict(event_size=3, params_per_dim=2, order=[1, 2, 3]), r"got \[1, 2, 3\]"),
    (dict(event_size=3, params_per_dim=2, order=[0.0, 1.0, 2.0]), r"got \[0\.0, 1\.0, 2\.0\]"),
])
def test_constructor_validation(kwargs, match):
  with pytest.raises(ValueError, match=match):
    nets.MADE(**kwargs)


def test_call_validation():
  made = nets.MADE(3, 2, hidden_units=(4,))
  with pytest.raises(ValueError, match=r"inputs \[\.\.\., 3\] \(event_size\); got shape"
                                       r" \(2, 4\)"):
    made(tf.zeros([2, 4]))
  made(tf.zeros([2, 3]))
  with pytest.raises(ValueError, match=r"context_units=None\); got one of shape \(2, 1\)"):
    made(tf.zeros([2, 3]), tf.zeros([2, 1]))
  conditional = nets.MADE(3, 2, hidden_units=(4,), context_units=2)
  with pytest.raises(ValueError, match=r"context \[\.\.\., 2\] \(context_units\); got shape"
                                       r" \(2, 5\)"):
    conditional(tf.zeros([2, 3]), tf.zeros([2, 5]))
  conditional(tf.zeros([2, 3]), tf.zeros([2, 2]))
  with pytest.raises(ValueError, match=r"context_units=2\); got none"):
    conditional(tf.zeros([2, 3]))
