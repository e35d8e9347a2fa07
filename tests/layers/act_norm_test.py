"""tfp_flows.layers.ActNorm: data-dependent initialisation inside `fit`, against numpy.

The reference is the per-channel Gaussian maximum-likelihood fit of the first batch:
`loc = mean(x)`, `log_scale = 0.5 log(var(x) + eps)` (population variance), computed in
float64; channels constant in that batch are centred and not scaled. At that point the gradient of the mean NLL of a model made of one ActNorm is
zero (d/dloc = -mean(z) e^-s = 0, d/ds = 1 - mean(z^2) = eps / (var + eps)), so the SGD
step that follows the initialisation in the same `fit` call moves the weights by less
than 1e-6 and the weights after one step must equal the reference.
"""

import math
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfp_flows as tff

EPSILON = 1e-6


def _model(event_shape, **kwargs):
  return tff.FlowModel([tff.layers.ActNorm(**kwargs)], event_shape)


def _data(mean, std, shape, seed=0):
  rng = np.random.default_rng(seed)
  return (np.asarray(mean) + np.asarray(std) * rng.normal(size=shape)).astype("float32")


def _reference(x):
  flat = x.astype(np.float64).reshape(-1, x.shape[-1])
  return flat.mean(0), 0.5 * np.log(flat.var(0) + EPSILON)


def _weights(layer):
  return (keras.ops.convert_to_numpy(layer.loc), keras.ops.convert_to_numpy(layer.log_scale),
          float(keras.ops.convert_to_numpy(layer.initialized)))


def _assert_standardised(layer, x, tol=1e-4):
  """The layer's data -> base output has per-channel mean 0 and variance 1 on x."""
  z, _ = layer(tf.constant(x), training=False)
  flat = z.numpy().astype(np.float64).reshape(-1, x.shape[-1])
  np.testing.assert_allclose(flat.mean(0), 0.0, atol=tol)
  np.testing.assert_allclose(flat.var(0), 1.0, atol=tol)


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("event_shape,mean,std", [
    ([3], [3.0, -1.0, 0.5], [0.5, 2.0, 1.0]),
    ([4, 4, 2], [2.0, -3.0], [0.3, 1.5]),
], ids=["vector", "image"])
def test_first_fit_step_initialises_from_the_batch(event_shape, mean, std, jit_compile):
  x = _data(mean, std, [64, *event_shape])
  model = _model(event_shape)
  layer = model.flow_layers[0]
  assert _weights(layer)[2] == 0.0
  model.compile(optimizer=keras.optimizers.SGD(1e-3), jit_compile=jit_compile)
  history = model.fit(x, batch_size=64, epochs=1, shuffle=False, verbose=0).history

  loc, log_scale, initialized = _weights(layer)
  expected_loc, expected_log_scale = _reference(x)
  assert initialized == 1.0
  np.testing.assert_allclose(loc, expected_loc, atol=1e-4)
  np.testing.assert_allclose(log_scale, expected_log_scale, atol=1e-4)
  _assert_standardised(layer, x)
  # The logged NLL is that of the initialised model: z is standardised, so per point
  # 0.5 D (log 2 pi + 1) minus the log-det of the data -> base map (H W sum s).
  pixels = math.prod(event_shape[:-1])
  expected_nll = (0.5 * math.prod(event_shape) * (math.log(2 * math.pi) + 1.0)
                  + pixels * expected_log_scale.sum())
  np.testing.assert_allclose(history["nll"][0], expected_nll, rtol=1e-4)

  # Later training steps never initialise again, even on very different data (with a
  # zero learning rate, so any change would be a re-initialisation).
  model.optimizer.learning_rate.assign(0.0)
  model.fit(x + 10.0, batch_size=64, epochs=1, verbose=0)
  loc_after, log_scale_after, initialized = _weights(layer)
  assert initialized == 1.0
  np.testing.assert_array_equal(loc_after, loc)
  np.testing.assert_array_equal(log_scale_after, log_scale)


def test_initialisation_is_accurate_for_data_far_from_zero():
  # A channel with mean 100 and std 1: the float32 one-pass variance
  # E[x^2] - E[x]^2 loses the variance to cancellation (E[x^2] ~ 1e4 has an ulp of
  # ~1e-3). The layer must still standardise its batch (and match float64 numpy).
  x = _data([100.0, 1000.0], [1.0, 1.0], [256, 2])
  model = _model([2])
  model(tf.constant(x), training=True)
  layer = model.flow_layers[0]
  _, expected_log_scale = _reference(x)
  np.testing.assert_allclose(_weights(layer)[1], expected_log_scale, atol=1e-4)
  _assert_standardised(layer, x)


def test_initialised_weights_survive_keras_save_and_load(tmp_path):
  x = _data([3.0, -1.0], [0.5, 2.0], [32, 2])
  model = _model([2])
  model.compile(optimizer=keras.optimizers.SGD(1e-3))
  model.fit(x, batch_size=32, epochs=1, verbose=0)
  path = str(tmp_path / "act_norm.keras")
  model.save(path)
  loaded = keras.models.load_model(path)
  saved = _weights(model.flow_layers[0])
  restored = _weights(loaded.flow_layers[0])
  assert restored[2] == 1.0
  np.testing.assert_array_equal(restored[0], saved[0])
  np.testing.assert_array_equal(restored[1], saved[1])
  np.testing.assert_allclose(loaded.log_prob(x).numpy(), model.log_prob(x).numpy(),
                             rtol=1e-6)
  # The restored layer knows it is initialised: training on new data does not reset it.
  loaded.compile(optimizer=keras.optimizers.SGD(0.0))
  loaded.fit(x + 10.0, batch_size=32, epochs=1, verbose=0)
  np.testing.assert_array_equal(_weights(loaded.flow_layers[0])[0], saved[0])


def test_batch_of_one_is_centred_not_scaled():
  """Regression (issue 14): a first batch of one row scaled every channel by 1000."""
  x = np.array([[0.3, -1.2, 2.0]], dtype="float32")
  model = _model([3])
  model(tf.constant(x), training=True)
  loc, log_scale, initialized = _weights(model.flow_layers[0])
  assert initialized == 1.0
  np.testing.assert_allclose(loc, x[0], rtol=1e-6)
  np.testing.assert_array_equal(log_scale, np.zeros(3))
  # z = x - loc = 0 and no scaling, so log p(x) = -0.5 D log(2 pi).
  np.testing.assert_allclose(model.log_prob(x).numpy(), [-1.5 * math.log(2 * math.pi)],
                             rtol=1e-6)


def test_constant_channel_is_centred_not_scaled():
  x = _data([0.0, 0.0], [1.0, 1.0], [16, 2])
  x[:, 1] = 4.0
  model = _model([2])
  model.compile(optimizer=keras.optimizers.SGD(0.0))
  model.fit(x, batch_size=16, epochs=1, verbose=0)
  loc, log_scale, _ = _weights(model.flow_layers[0])
  np.testing.assert_allclose(loc[1], 4.0, rtol=1e-6)
  assert log_scale[1] == 0.0
  np.testing.assert_allclose(log_scale[0], _reference(x)[1][0], atol=1e-4)
  z, _ = model.flow_layers[0](tf.constant(x), training=False)
  np.testing.assert_allclose(z.numpy()[:, 1], 0.0, atol=1e-6)


@pytest.mark.parametrize("first_batch", ["one_row", "constant_column"])
def test_degenerate_first_batch_ends_near_a_healthy_run(first_batch):
  """Regression (issue 14): held-out NLL ended at 7e5 after a degenerate first batch.

  Two-dimensional data whose first column is 0/1 with noise; the unlucky run sees first a
  batch of one row, or a first batch in which the first column is exactly constant, and
  then the same shuffled data as the healthy run.
  """
  rng = np.random.default_rng(0)
  n = 4096
  bits = rng.integers(0, 2, n).astype("float32")
  x = np.stack([bits + 0.1 * rng.normal(size=n), rng.normal(size=n)], -1).astype("float32")
  x_test = x[-1024:]
  x_train = x[:-1024]

  def fit(first):
    keras.utils.set_random_seed(0)
    layers = []
    for i in range(4):
      layers += [tff.layers.ActNorm(),
                 tff.layers.AffineCoupling(scale="exp", reverse=i % 2 == 1,
                                           hidden_units=(32, 32))]
    model = tff.FlowModel(layers, [2])
    model.compile(optimizer=keras.optimizers.Adam(2e-3), jit_compile=True)
    if first is not None:
      model.fit(first, batch_size=len(first), epochs=1, verbose=0, shuffle=False)
    model.fit(x_train, batch_size=128, epochs=3, verbose=0, shuffle=False)
    return -float(np.mean(model.log_prob(x_test).numpy()))

  degenerate = x_train[:1] if first_batch == "one_row" else np.concatenate(
      [np.full([64, 1], 0.5, "float32"), x_train[:64, 1:]], -1)
  healthy = fit(None)
  unlucky = fit(degenerate)
  assert np.isfinite(healthy) and healthy < 2.3  # a standard normal scores 2.36
  assert unlucky < healthy + 0.1, (healthy, unlucky)


def test_evaluation_mode_never_initialises():
  x = _data([3.0, -1.0], [0.5, 2.0], [16, 2])
  model = _model([2])
  model.compile(optimizer="adam")
  standard_normal = -0.5 * (x.astype(np.float64) ** 2).sum(-1) - math.log(2 * math.pi)
  np.testing.assert_allclose(model.log_prob(x).numpy(), standard_normal, rtol=1e-5)
  model(tf.constant(x))
  model(tf.constant(x), training=False)
  model.evaluate(x, batch_size=8, verbose=0)
  model.predict(x, batch_size=8, verbose=0)
  loc, log_scale, initialized = _weights(model.flow_layers[0])
  assert initialized == 0.0
  np.testing.assert_array_equal(loc, 0.0)
  np.testing.assert_array_equal(log_scale, 0.0)
  np.testing.assert_allclose(model.log_prob(x).numpy(), standard_normal, rtol=1e-5)


def test_data_init_false_keeps_the_identity_start():
  x = _data([3.0, -1.0], [0.5, 2.0], [16, 2])
  model = _model([2], data_init=False)
  model.compile(optimizer=keras.optimizers.SGD(0.0))
  model.fit(x, batch_size=16, epochs=1, verbose=0)
  loc, log_scale, initialized = _weights(model.flow_layers[0])
  assert initialized == 0.0
  np.testing.assert_array_equal(loc, 0.0)
  np.testing.assert_array_equal(log_scale, 0.0)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_a_frozen_layer_is_not_initialised_by_fit(jit_compile):
  # Keras' contract for trainable=False: fit leaves the layer's weights as they are.
  x = _data([3.0, -1.0], [0.5, 2.0], [16, 2])
  model = tff.FlowModel([tff.layers.ActNorm(), tff.layers.AffineCoupling()], [2])
  model.flow_layers[0].trainable = False
  model.compile(optimizer=keras.optimizers.Adam(0.01), jit_compile=jit_compile)
  model.fit(x, batch_size=8, epochs=1, verbose=0)
  loc, log_scale, initialized = _weights(model.flow_layers[0])
  assert initialized == 0.0
  np.testing.assert_array_equal(loc, 0.0)
  np.testing.assert_array_equal(log_scale, 0.0)
  # Unfrozen again, the next fit initialises it from its first batch.
  model.flow_layers[0].trainable = True
  model.compile(optimizer=keras.optimizers.SGD(0.0), jit_compile=jit_compile)
  model.fit(x, batch_size=16, epochs=1, verbose=0)
  loc, log_scale, initialized = _weights(model.flow_layers[0])
  assert initialized == 1.0
  np.testing.assert_allclose(loc, x.mean(0), rtol=1e-5)
  np.testing.assert_allclose(log_scale, 0.5 * np.log(x.var(0) + EPSILON), rtol=1e-5)


@pytest.mark.parametrize("epsilon", [0.0, -1e-3])
def test_non_positive_epsilon_is_rejected(epsilon):
  with pytest.raises(ValueError, match="epsilon must be positive"):
    tff.layers.ActNorm(epsilon=epsilon)


_MIRRORED = textwrap.dedent("""
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import tfp_flows as tff

    rng = np.random.default_rng(0)
    # Replica 0 gets the first half of the global batch, replica 1 the second; their
    # statistics differ, so a per-replica initialisation would not match the global one.
    x = np.concatenate([rng.normal(0.0, 1.0, size=(8, 2)),
                        rng.normal(4.0, 3.0, size=(8, 2))]).astype("float32")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
      model = tff.FlowModel([tff.layers.ActNorm()], [2])
      model.compile(optimizer=keras.optimizers.SGD(0.0))
    model.fit(x, batch_size=16, shuffle=False, verbose=0)
    layer = model.flow_layers[0]
    flat = x.astype(np.float64)
    np.testing.assert_allclose(layer.loc.numpy(), flat.mean(0), atol=1e-5)
    np.testing.assert_allclose(layer.log_scale.numpy(), 0.5 * np.log(flat.var(0) + 1e-6),
                               atol=1e-5)
    assert float(layer.initialized.numpy()) == 1.0
    print("OK")
""")


def test_initialisation_uses_the_global_batch_across_replicas():
  result = subprocess.run([sys.executable, "-c", _MIRRORED], capture_output=True,
                          text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith("OK")


if __name__ == "__main__":
  # `main` of this file's py_test: under `bazel test` run the tests, not just the import.
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
