"""ReverseKL under MirroredStrategy (2 logical CPU devices) and through tff.export.save.

Runs in a subprocess: logical devices must be configured before TensorFlow starts.
Checks that the replicas draw different samples (the replica is folded into each
step's seed: identical draws would not reduce the gradient's variance at all), that the
fit converges to the target's closed-form moments, and that the exported SavedModel's
`log_prob` equals the live model's.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

_WORKER = textwrap.dedent("""
    import json
    import sys

    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    import tensorflow_probability as tfp
    import tfp_flows as tff

    tfd = tfp.distributions
    target = tfd.MultivariateNormalDiag([1.0, -1.0], [0.5, 2.0])
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
      keras.utils.set_random_seed(0)
      model = tff.FlowModel(
          [tff.layers.AffineCoupling(hidden_units=(8,)), tff.layers.GaussianPrior()], [2],
          objective=tff.objectives.ReverseKL(target.log_prob, num_samples=32))
      model.compile(optimizer=keras.optimizers.Adam(2e-2))
    # The seeds each replica draws for a training step.
    draw = lambda: model.objective._seed(True)  # pylint: disable=protected-access
    seeds = strategy.run(draw)
    seeds = [s.numpy().tolist() for s in strategy.experimental_local_results(seeds)]
    history = model.fit(epochs=3, steps_per_epoch=100, verbose=0).history
    x = model.sample(20000, seed=1).numpy()
    tff.export.save(model, sys.argv[2])
    points = tf.constant([[0.5, -1.0], [2.0, 1.0]])
    served = tf.saved_model.load(sys.argv[2]).signatures["log_prob"](x=points)
    with open(sys.argv[1], "w") as f:
      json.dump({"seeds": seeds, "history": {k: list(map(float, v))
                                             for k, v in history.items()},
                 "mean": x.mean(0).tolist(), "std": x.std(0).tolist(),
                 "served": list(served.values())[0].numpy().tolist(),
                 "live": model.log_prob(points).numpy().tolist(),
                 "iterations": int(model.optimizer.iterations.numpy())}, f)
""")


def test_reverse_kl_mirrored_and_exported(tmp_path):
  output = tmp_path / "result.json"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  completed = subprocess.run(
      [sys.executable, "-c", _WORKER, str(output), str(tmp_path / "exported")],
      cwd=root, env=env, capture_output=True, text=True, timeout=600)
  assert completed.returncode == 0, completed.stderr[-3000:]
  result = json.loads(output.read_text())
  assert len(result["seeds"]) == 2 and result["seeds"][0] != result["seeds"][1]
  assert result["iterations"] == 300
  history = result["history"]
  assert history["ess_fraction"][-1] > 0.9
  np.testing.assert_allclose(history["loss"][-1], 0.0, atol=0.05)  # KL -> 0, log Z = 0
  # Within a tenth of the target's standard deviation (sampling error is 0.007 sd).
  np.testing.assert_array_less(np.abs(np.subtract(result["mean"], [1.0, -1.0])),
                               [0.05, 0.2])
  np.testing.assert_allclose(result["std"], [0.5, 2.0], rtol=0.1)
  np.testing.assert_allclose(result["served"], result["live"], rtol=1e-5)
