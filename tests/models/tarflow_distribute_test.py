"""TarFlow under tf.distribute: MirroredStrategy over 2 logical CPUs, as for the other presets.

Runs in a fresh process (logical devices must be configured before TensorFlow starts):

* Same numbers as one device. A class-conditional TarFlow with its training randomness
  switched off (no dequantisation, `noise_std=0`, `label_dropout=0`) trains 4 steps
  (SGD with momentum, one global batch of 8 per step, each replica 4 rows from a
  different Gaussian and with different labels) on one device and under
  `MirroredStrategy`: the logged per-step losses and the final weights must agree to
  1e-5 (the differences are float32 summation order, 6e-8 measured). SGD rather than
  Adam for the reason in `tests/distribute_test.py`.
* Replicas draw different noise. In the full preset (`Dequantize`, `NoiseAugmentation`,
  label dropout), identical inputs on both replicas get different dequantisation noise,
  different Gaussian noise (each standard normal) and different dropped labels in
  training, while evaluation gives both replicas the one-device value; the preset then
  trains under the strategy with a falling loss.

Keras' `jit_compile=True` under MirroredStrategy over logical CPUs fails inside
TensorFlow itself (one XLA cluster reading variables of both devices: "Trying to access
resource ... located in device CPU:1 from device CPU:0"; see `tests/flow_guard_test.py`),
so the strategy runs compile graphs without XLA; the one-device run is repeated under
XLA and must give the same numbers too.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

TOLERANCE = 1e-5

_WORKER = textwrap.dedent("""
    import sys

    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    import tfp_flows as tff

    IMAGE = [4, 4, 1]
    BLOCK = {"channels": 8, "heads": 2, "num_layers": 1, "num_classes": 3}
    arrays = {}
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

    # 1. Deterministic training: one device vs MirroredStrategy.
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0.0, 1.0, [4, *IMAGE]),
                        rng.normal(2.0, 0.5, [4, *IMAGE])]).astype("float32")
    labels = np.array([0, 0, 1, 1, 2, 2, -1, 2], "int32")

    def train(strategy, jit_compile):
      with strategy.scope():
        keras.utils.set_random_seed(0)
        model = tff.models.TarFlowModel(
            [tff.layers.NoiseAugmentation(noise_std=0.0),
             tff.layers.TarFlowBlock(**BLOCK, label_dropout=0.0),
             tff.layers.TarFlowBlock(**BLOCK, label_dropout=0.0, reverse=True)],
            event_shape=IMAGE, context_shape=[], context_dtype="int32")
        values = np.random.default_rng(1)
        for weight in model.trainable_weights:  # away from the identity start
          weight.assign(keras.ops.convert_to_numpy(weight)
                        + 0.05 * values.normal(size=weight.shape).astype("float32"))
        initial = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
        model.compile(optimizer=keras.optimizers.SGD(3e-4, momentum=0.9),
                      jit_compile=jit_compile)
      history = model.fit(x, labels, batch_size=8, epochs=4, shuffle=False,
                          verbose=0).history
      assert int(model.optimizer.iterations.numpy()) == 4
      final = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
      moved = max(float(np.abs(f - i).max()) for f, i in zip(final, initial))
      return final, np.array(history["loss"]), moved, strategy.num_replicas_in_sync

    for name, strategy, jit_compile in (
        ("single", tf.distribute.get_strategy(), False),
        ("single_xla", tf.distribute.get_strategy(), True),
        ("mirrored", mirrored, False)):
      final, loss, moved, replicas = train(strategy, jit_compile)
      for i, value in enumerate(final):
        arrays[f"{name}/weight/{i}"] = value
      arrays[f"{name}/loss"], arrays[f"{name}/moved"] = loss, np.array(moved)
      arrays[f"{name}/replicas"] = np.array(replicas)

    # 2. The full preset's training noise on each replica.
    with mirrored.scope():
      keras.utils.set_random_seed(0)
      model = tff.models.TarFlow(IMAGE, patch_size=2, channels=8, num_blocks=2,
                                 layers_per_block=1, heads=2, noise_std=0.2, num_bits=5,
                                 num_classes=3, label_dropout=0.5, logit_alpha=None)
      dequantize, noise, block = model.flow_layers[:3]
      values = np.random.default_rng(3)
      for weight in block.trainable_weights:  # a block that reads the labels
        weight.assign(keras.ops.convert_to_numpy(weight)
                      + 0.1 * values.normal(size=weight.shape).astype("float32"))
    pixels = tf.constant(np.random.default_rng(2).integers(0, 32, [32, *IMAGE]),
                         tf.float32)
    v = pixels / 32.0 - 0.5
    class_labels = tf.constant(np.arange(32) % 3, tf.int32)

    @tf.function
    def draws():
      dequantized, _ = dequantize(pixels, training=True)
      noisy, _ = noise(v, training=True)
      tokens, _ = block(v, context=class_labels, training=True)
      return {"uniform": (dequantized + 0.5) * 32.0 - pixels,
              "normal": (noisy / 2.0 - v) / noise.input_noise_std,
              "block": tokens,
              "log_prob": model(pixels, context=class_labels, training=True),
              "eval_log_prob": model(pixels, context=class_labels, training=False)}

    per_replica = mirrored.run(draws)
    for key, value in per_replica.items():
      for index, local in enumerate(mirrored.experimental_local_results(value)):
        arrays[f"draw/{key}/{index}"] = local.numpy()
    arrays["draw/block_labelled"] = block(v, context=class_labels, training=False)[0].numpy()
    arrays["draw/block_unlabelled"] = block(v, context=-tf.ones_like(class_labels),
                                            training=False)[0].numpy()
    arrays["draw/eval_log_prob_single"] = model(pixels, context=class_labels,
                                                training=False).numpy()
    with mirrored.scope():
      model.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=False)
    history = model.fit(pixels, class_labels, batch_size=16, epochs=3, verbose=0).history
    arrays["preset/loss"] = np.array(history["loss"])
    np.savez(sys.argv[1], **arrays)
    print("TRAINED")
""")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  output = tmp_path_factory.mktemp("tarflow_distribute") / "result.npz"
  completed = subprocess.run([sys.executable, "-c", _WORKER, str(output)],
                             capture_output=True, text=True, timeout=600,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  assert completed.returncode == 0 and "TRAINED" in completed.stdout, (
      completed.stderr[-4000:])
  return dict(np.load(output))


def _weights(result, name):
  count = sum(1 for key in result if key.startswith(f"{name}/weight/"))
  return [result[f"{name}/weight/{i}"] for i in range(count)]


@pytest.mark.parametrize("name", ["mirrored", "single_xla"])
def test_training_equals_one_device_graph_on_the_same_global_batches(result, name):
  assert int(result["single/replicas"]) == 1
  assert int(result[f"{name}/replicas"]) == (2 if name == "mirrored" else 1)
  # The reference moved far more than the tolerance, and its loss changed.
  assert float(result["single/moved"]) > 1e3 * TOLERANCE
  single_loss = result["single/loss"]
  assert np.all(np.isfinite(single_loss)) and abs(single_loss[-1] - single_loss[0]) > 0.1
  np.testing.assert_allclose(result[f"{name}/loss"], single_loss, rtol=TOLERANCE)
  single, other = _weights(result, "single"), _weights(result, name)
  assert len(single) == len(other) > 0
  difference = max(float(np.abs(s - m).max()) for s, m in zip(single, other))
  print(f"max |{name} weight - single-device weight| = {difference:.3g}")
  assert difference < TOLERANCE


def test_replicas_draw_different_noise(result):
  uniform = [result[f"draw/uniform/{i}"] for i in range(2)]
  normal = [result[f"draw/normal/{i}"] for i in range(2)]
  for u in uniform:  # U[0, 1) dequantisation noise, 512 draws per replica
    assert u.min() >= -1e-4 and u.max() < 1.0 + 1e-4
    assert abs(u.mean() - 0.5) < 0.05  # 4 standard errors (sd 0.0128)
  assert np.abs(uniform[0] - uniform[1]).max() > 0.5
  for eps in normal:  # standard normal, 512 draws per replica
    assert abs(eps.mean()) < 0.18 and abs(eps.std() - 1.0) < 0.13  # 4 standard errors
  assert np.corrcoef(normal[0].ravel(), normal[1].ravel())[0, 1] < 0.2

  # Label dropout: each row of a block's training output is the labelled or the
  # unlabelled evaluation output; which rows were dropped differs between replicas.
  dropped = []
  for index in range(2):
    tokens = result[f"draw/block/{index}"]
    as_label = np.all(np.isclose(tokens, result["draw/block_labelled"], atol=1e-5),
                      axis=(1, 2, 3))
    as_none = np.all(np.isclose(tokens, result["draw/block_unlabelled"], atol=1e-5),
                     axis=(1, 2, 3))
    assert np.all(as_label ^ as_none)
    assert 6 <= as_none.sum() <= 26  # binomial(32, 1/2) within 3.5 standard deviations
    dropped.append(as_none)
  assert np.any(dropped[0] != dropped[1])

  # The whole model: training log-densities differ between replicas on identical
  # inputs; evaluation is deterministic and equals the one-device value.
  assert np.abs(result["draw/log_prob/0"] - result["draw/log_prob/1"]).max() > 0.1
  for index in range(2):
    np.testing.assert_allclose(result[f"draw/eval_log_prob/{index}"],
                               result["draw/eval_log_prob_single"], rtol=1e-6)


def test_preset_trains_under_mirrored_strategy(result):
  loss = result["preset/loss"]
  assert np.all(np.isfinite(loss)) and loss[-1] < loss[0]


if __name__ == "__main__":
  # `main` of this file's py_test: under `bazel test` run the tests, not just the import.
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
