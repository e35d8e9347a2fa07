"""Random draws of flow layers are independent across `tf.distribute` replicas.

A `keras.random.SeedGenerator` has the same state on every replica, so draws from it
alone repeat: under `MirroredStrategy` both replicas would get the same dequantisation
noise, Hutchinson probes and Russian-roulette counts. The layers fold the replica index
into the drawn seed (`tfp_flows.layers._replica_seed`). Checked in a fresh process with
two logical CPU devices (they must be configured before TensorFlow starts):

* the two replicas' draws differ (Dequantize noise on identical inputs; the seeds of
  ResidualBlock's and FFJORD's training bijectors);
* each replica's draw equals the one-device draw with its replica index folded in,
  computed independently with `tf.random.experimental.stateless_fold_in`;
* outside a strategy the seed is the SeedGenerator's own draw, unchanged.
"""

import subprocess
import sys
import textwrap

import numpy as np

_SCRIPT = textwrap.dedent("""
    import sys

    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    import tfp_flows as tff
    from tfp_flows.layers import _replica_seed

    def make_layers():
      dequantize = tff.layers.Dequantize(num_bits=5, alpha=None, seed=11)
      residual = tff.layers.ResidualBlock(hidden_units=(8,), seed=12)
      ffjord = tff.layers.FFJORD(hidden_units=(8,), seed=13)
      for layer in (dequantize, residual, ffjord):
        layer.build((None, 3))
      return dequantize, residual, ffjord

    def draws(layers):
      dequantize, residual, ffjord = layers
      pixels = tf.fill([4, 3], 7.0)
      return {"noise": dequantize(pixels, training=True)[0],
              "residual_seed": residual.make_bijector(training=True).parameters["seed"],
              "ffjord_seed": ffjord.make_bijector(training=True).parameters["seed"]}

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
      mirrored_layers = make_layers()
    per_replica = strategy.run(tf.function(lambda: draws(mirrored_layers)))
    arrays = {}
    for name, value in per_replica.items():
      for index, local in enumerate(strategy.experimental_local_results(value)):
        arrays[f"mirrored/{name}/{index}"] = local.numpy()

    single = draws(make_layers())
    for name, value in single.items():
      arrays[f"single/{name}"] = value.numpy()
    # The raw SeedGenerator draws the layers start from, taken by fresh generators.
    for name, seed in (("dequantize", 11), ("residual", 12), ("ffjord", 13)):
      raw = keras.random.randint([2], 0, 2**31 - 1,
                                 seed=keras.random.SeedGenerator(seed), dtype="int32")
      arrays[f"raw/{name}"] = raw.numpy()
      for index in range(2):
        arrays[f"folded/{name}/{index}"] = tf.random.experimental.stateless_fold_in(
            raw, index).numpy()
    np.savez(sys.argv[1], **arrays)
    print("DRAWN")
""")


def test_layers_draw_independent_randomness_on_each_replica(tmp_path):
  script = tmp_path / "replicas.py"
  script.write_text(_SCRIPT)
  output = tmp_path / "draws.npz"
  result = subprocess.run([sys.executable, str(script), str(output)],
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0 and "DRAWN" in result.stdout, result.stderr[-4000:]
  d = np.load(output)

  for name in ("noise", "residual_seed", "ffjord_seed"):
    assert not np.array_equal(d[f"mirrored/{name}/0"], d[f"mirrored/{name}/1"]), name

  for layer in ("residual", "ffjord"):
    np.testing.assert_array_equal(d[f"single/{layer}_seed"], d[f"raw/{layer}"])
    for index in range(2):
      np.testing.assert_array_equal(d[f"mirrored/{layer}_seed/{index}"],
                                    d[f"folded/{layer}/{index}"])

  # Dequantize (alpha=None) maps v = x + u to v / 32 - 1/2, so u is recoverable.
  for index in range(2):
    noise = (d[f"mirrored/noise/{index}"] + 0.5) * 32.0 - 7.0
    expected = _stateless_uniform(d[f"folded/dequantize/{index}"])
    np.testing.assert_allclose(noise, expected, atol=2e-5)
  np.testing.assert_allclose((d["single/noise"] + 0.5) * 32.0 - 7.0,
                             _stateless_uniform(d["raw/dequantize"]), atol=2e-5)


def _stateless_uniform(seed):
  import tensorflow as tf
  return tf.random.stateless_uniform([4, 3], seed).numpy()
