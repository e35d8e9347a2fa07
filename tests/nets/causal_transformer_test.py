"""tfp_flows.nets.CausalTransformer: causality, the key/value cache, init, dtype, saving."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_flows import nets

T, D = 5, 3


def _net(dtype="float64", num_classes=None, seed=0, scale=0.3):
  keras.utils.set_random_seed(seed)
  net = nets.CausalTransformer(T, D, params_per_dim=2, channels=8, num_layers=2, heads=2,
                               num_classes=num_classes, dtype=dtype)
  net.build((None, T, D))
  rng = np.random.default_rng(seed)
  for weight in net.trainable_weights:
    value = keras.ops.convert_to_numpy(weight)
    weight.assign(value + scale * rng.normal(size=value.shape).astype(value.dtype))
  return net


def _tokens(n=4, seed=1, dtype="float64"):
  return tf.constant(np.random.default_rng(seed).normal(size=[n, T, D]).astype(dtype))


def test_row_i_reads_only_tokens_before_i():
  net = _net()
  tokens = _tokens()
  base = net(tokens).numpy()
  assert base.shape == (4, T, D, 2)
  for j in range(T):
    moved = tokens.numpy().copy()
    moved[:, j] += 1.0
    out = net(tf.constant(moved)).numpy()
    np.testing.assert_array_equal(out[:, :j + 1], base[:, :j + 1])
    if j + 1 < T:
      assert np.abs(out[:, j + 1:] - base[:, j + 1:]).max() > 1e-3


def test_prefix_gives_the_same_rows():
  net = _net()
  tokens = _tokens()
  np.testing.assert_allclose(net(tokens[:, :3]).numpy(), net(tokens).numpy()[:, :3],
                             rtol=1e-12, atol=1e-12)


def _decode(net, tokens, labels=None):
  """Rows of every position by incremental decoding, feeding the given tokens."""
  cache = net.initial_cache(tokens.shape[0], labels)
  previous = tf.zeros_like(tokens[:, 0])
  rows = []
  for i in range(T):
    params, cache = net.step(cache, tf.constant(i), previous, labels)
    rows.append(params)
    previous = tokens[:, i]
  return tf.stack(rows, axis=1)


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 1e-5)])
def test_kv_cache_decoding_equals_parallel_pass(dtype, tol):
  net = _net(dtype, num_classes=3)
  tokens = _tokens(dtype=dtype)
  labels = tf.constant([0, 2, -1, 1])
  np.testing.assert_allclose(_decode(net, tokens, labels).numpy(),
                             net(tokens, labels).numpy(), rtol=tol, atol=tol)
  xla = tf.function(lambda t: _decode(net, t, labels), jit_compile=True)
  np.testing.assert_allclose(xla(tokens).numpy(), net(tokens, labels).numpy(), rtol=tol,
                             atol=tol)


def test_negative_labels_are_the_no_label_row():
  net = _net(num_classes=3)
  tokens = _tokens()
  np.testing.assert_allclose(net(tokens, tf.constant([-1, -1, -1, -1])).numpy(),
                             net(tokens).numpy(), rtol=1e-12)
  assert np.abs(net(tokens, tf.constant([0, 0, 0, 0])).numpy()
                - net(tokens, tf.constant([1, 1, 1, 1])).numpy()).max() > 1e-3


def test_starts_at_zero_output_with_every_weight_in_its_dtype():
  net = nets.CausalTransformer(T, D, channels=8, num_layers=2, heads=2, num_classes=3,
                               dtype="float64")
  net.build((None, T, D))
  np.testing.assert_array_equal(net(_tokens(), tf.constant([0, 1, 2, -1])).numpy(), 0.0)
  # start, positions, class table; proj_in 2; per layer 2 norms x 2 + 4 dense x 2 = 12;
  # out norm 2; proj_out 2.
  assert len(net.trainable_weights) == 3 + 2 + 2 * 12 + 2 + 2
  assert {w.dtype for w in net.weights} == {"float64"}


def test_keras_round_trip(tmp_path):
  net = _net("float32", num_classes=3)
  tokens_in = keras.Input((T, D))
  labels_in = keras.Input((), dtype="int32")
  model = keras.Model([tokens_in, labels_in], net(tokens_in, labels_in))
  inputs = [_tokens(dtype="float32"), tf.constant([0, 1, 2, -1])]
  path = str(tmp_path / "net.keras")
  model.save(path)
  loaded = keras.models.load_model(path)
  np.testing.assert_array_equal(loaded(inputs).numpy(), model(inputs).numpy())
  assert np.abs(model(inputs).numpy()).max() > 1e-3


def test_errors():
  with pytest.raises(ValueError, match="heads=3 must divide channels=8"):
    nets.CausalTransformer(T, D, channels=8, heads=3)
  with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
    nets.CausalTransformer(T, D, channels=8, heads=2, num_classes=1)
  net = _net()
  with pytest.raises(ValueError, match="takes no labels"):
    net(_tokens(), tf.constant([0, 0, 0, 0]))
