"""FlowModel.fit under tf.distribute: the same weights as one device on the same batches.

A small neural spline flow with a data-initialised ActNorm (2-D, 2 spline couplings
with LU mixing) trains for 8 steps (2 epochs of 4 global batches of 16) with SGD with
momentum in three settings, each in its own process (logical devices and TF_CONFIG
must be set before TensorFlow starts), all started at once:

* one process with 2 logical CPU devices: single-device training (the reference), then
  `MirroredStrategy` over both devices;
* two processes on localhost with TF_CONFIG: `MultiWorkerMirroredStrategy`, one
  replica per worker.

Each global batch is split between the replicas (8 rows each), and its two halves come
from different Gaussians, so an ActNorm initialised from one replica's half instead of
the global batch would be off by about 2 in `loc`. The final weights must equal the
reference to 1e-5 (the differences are float32 summation order, ~1e-7).

SGD rather than Adam: at the data-dependent initialisation the gradient of the ActNorm
parameters is zero up to round-off, and Adam divides the gradient by its own magnitude,
so its first step turns round-off of either order of summation into a step of the
learning rate (a 1e-2 run differs by ~4e-4 from the single-device run for that reason,
not because the replicas disagree).
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

BATCH = 16
STEPS = 4
EPOCHS = 2
TOLERANCE = 1e-5

_WORKER = textwrap.dedent(f"""
    import sys

    import numpy as np
    import tensorflow as tf

    mode, output = sys.argv[1], sys.argv[2]
    if mode == "mirrored":
      cpu = tf.config.list_physical_devices("CPU")[0]
      tf.config.set_logical_device_configuration(
          cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    import tfp_flows as tff

    rng = np.random.default_rng(0)
    halves = []
    for _ in range({STEPS}):
      halves += [rng.normal([0.0, 1.0], [1.0, 0.5], size=({BATCH} // 2, 2)),
                 rng.normal([4.0, -3.0], [3.0, 2.0], size=({BATCH} // 2, 2))]
    x = np.concatenate(halves).astype("float32")

    def train(strategy):
      with strategy.scope():
        keras.utils.set_random_seed(0)
        model = tff.models.NeuralSplineFlow(2, num_layers=2, num_bins=4,
                                            hidden_units=(8,))
        initial = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
      history = model.fit(x, batch_size={BATCH}, epochs={EPOCHS}, shuffle=False,
                          verbose=0).history
      assert int(model.optimizer.iterations.numpy()) == {STEPS * EPOCHS}
      moved = max(float(np.abs(keras.ops.convert_to_numpy(v) - i).max())
                  for v, i in zip(model.trainable_variables, initial))
      return {{"variables": [keras.ops.convert_to_numpy(v) for v in model.variables],
               "nll": history["nll"], "moved": moved,
               "replicas": strategy.num_replicas_in_sync}}

    if mode == "mirrored":
      runs = {{"single": train(tf.distribute.get_strategy()),
               "mirrored": train(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))}}
    else:
      runs = {{"multi_worker": train(tf.distribute.MultiWorkerMirroredStrategy())}}
    arrays = {{}}
    for name, run in runs.items():
      for i, value in enumerate(run["variables"]):
        arrays[f"{{name}}/{{i}}"] = value
      arrays[f"{{name}}/nll"] = np.array(run["nll"])
      arrays[f"{{name}}/moved"] = np.array(run["moved"])
      arrays[f"{{name}}/replicas"] = np.array(run["replicas"])
    np.savez(output, **arrays)
    print("TRAINED")
""")


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run_together(commands, timeout=600):
  """Starts every (argv, env) at once; waits for all; on a failure stops the others."""
  processes = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
               for argv, env in commands]
  deadline = time.monotonic() + timeout
  try:
    while any(p.poll() is None for p in processes):
      # A worker that failed leaves its peer waiting forever for a collective.
      if any(p.returncode not in (None, 0) for p in processes) or (
          time.monotonic() > deadline):
        break
      time.sleep(0.2)
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
  outputs = [p.communicate() for p in processes]
  for p, (stdout, stderr) in zip(processes, outputs):
    assert p.returncode == 0 and "TRAINED" in stdout, stderr[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """{"single", "mirrored", "multi_worker_0", "multi_worker_1"}: npz contents."""
  root = tmp_path_factory.mktemp("distribute")
  script = root / "worker.py"
  script.write_text(_WORKER)
  ports = [_free_port(), _free_port()]
  commands = [([sys.executable, str(script), "mirrored", str(root / "mirrored.npz")],
               dict(os.environ))]
  for index in range(2):
    tf_config = {"cluster": {"worker": [f"localhost:{port}" for port in ports]},
                 "task": {"type": "worker", "index": index}}
    commands.append(([sys.executable, str(script), "multi_worker",
                      str(root / f"multi_worker_{index}.npz")],
                     dict(os.environ, TF_CONFIG=json.dumps(tf_config))))
  _run_together(commands)
  mirrored = np.load(root / "mirrored.npz")
  result = {name: _unpack(mirrored, name) for name in ("single", "mirrored")}
  for index in range(2):
    result[f"multi_worker_{index}"] = _unpack(
        np.load(root / f"multi_worker_{index}.npz"), "multi_worker")
  return result


def _unpack(arrays, name):
  count = sum(1 for k in arrays.files if k.startswith(f"{name}/") and k[len(name) + 1:]
              .isdigit())
  return {"variables": [arrays[f"{name}/{i}"] for i in range(count)],
          "nll": arrays[f"{name}/nll"], "moved": float(arrays[f"{name}/moved"]),
          "replicas": int(arrays[f"{name}/replicas"])}


def _max_difference(a, b):
  assert len(a["variables"]) == len(b["variables"])
  return max(float(np.abs(u - v).max()) for u, v in zip(a["variables"], b["variables"]))


def test_reference_is_meaningful(runs):
  single = runs["single"]
  assert single["replicas"] == 1
  # Training moved the weights far more than the tolerance ...
  assert single["moved"] > 1e3 * TOLERANCE
  # ... and ActNorm (variables 0 and 1: loc, log_scale) was initialised from the
  # global batch: its loc is far from the first replica's half-batch mean.
  first_half_mean = np.array([0.0, 1.0])
  assert np.abs(single["variables"][0] - first_half_mean).max() > 1.0


@pytest.mark.parametrize("name", ["mirrored", "multi_worker_0", "multi_worker_1"])
def test_distributed_weights_equal_single_device(runs, name):
  run, single = runs[name], runs["single"]
  assert run["replicas"] == 2
  difference = _max_difference(run, single)
  print(f"{name}: max |weight - single-device weight| = {difference:.3g}")
  assert difference < TOLERANCE
  # The epoch NLLs logged by fit are the global-batch means too.
  np.testing.assert_allclose(run["nll"], single["nll"], rtol=1e-5)


if __name__ == "__main__":
  # `main` of this file's py_test: under `bazel test` run the tests, not just the import.
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
