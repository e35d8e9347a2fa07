"""Timing, process and table helpers shared by the benchmark scripts.

The scripts time each case in its own worker subprocess (`worker_command`), which prints
one JSON line after a marker (`emit`, `parse_result`); the parent reports the CPU cores
that *other* processes used meanwhile (`CpuMeter`), can wait for a quiet machine first
(`wait_for_quiet`), pins the library version with an md5 of its sources
(`fingerprint`) and prints Markdown tables (`table_header`, `ratio`, `spread`).

Rates are medians over timed repeats after warm-up (`median`, `timed_calls`,
`timed_rates`); a repeat ends with `sync`, which waits for the device, so asynchronous
dispatch does not make a call look free. Nothing here imports TensorFlow at module
level: the parent process stays light and workers import it when they need it.
"""

import hashlib
import importlib.util
import json
import os
import resource
import sys
import time

from absl import app

__all__ = [
    "median", "sync", "timed_calls", "calls_for_duration", "timed_rates", "peak_rss_mb",
    "keras_train_step", "fit_rates", "eval_functions", "vector_data", "nsf_coupling_preset",
    "check_choices",
    "warn_if_changed",
    "emit", "parse_result", "worker_command", "worker_env", "cpu_jiffies", "busy_cores",
    "wait_for_quiet", "load_average", "CpuMeter", "fingerprint", "ratio", "spread",
    "table_header",
]


# ----------------------------------------------------------------------------- timing


def median(values):
  """The median of `values` (the mean of the two middle ones for an even count); NaN if empty."""
  values = sorted(values)
  n = len(values)
  if not n:
    return float("nan")
  return values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])


def sync(out):
  """Waits until every tensor in the nest `out` is computed (reads it to the host)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  for t in tf.nest.flatten(out):
    if hasattr(t, "numpy"):
      t.numpy()


def timed_calls(fn, args_list, repeats, calls, items_per_call):
  """items/s of `fn` per repeat, each repeat `calls` calls synchronised at its end.

  Call i of a repeat takes `args_list[i % len(args_list)]`.
  """
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = None
    for i in range(calls):
      out = fn(*args_list[i % len(args_list)])
    sync(out)
    rates.append(items_per_call * calls / (time.perf_counter() - start))
  return rates


def calls_for_duration(fn, args_list, seconds):
  """Times one call of `fn(*args_list[0])`: how many calls make a repeat of ~`seconds`."""
  start = time.perf_counter()
  sync(fn(*args_list[0]))
  per_call = time.perf_counter() - start
  return max(1, int(round(seconds / max(per_call, 1e-6))))


def timed_rates(fn, args_list, repeats, seconds, items_per_call):
  """(items/s per repeat, calls per repeat), repeats sized to last ~`seconds` each."""
  calls = calls_for_duration(fn, args_list, seconds)
  return timed_calls(fn, args_list, repeats, calls, items_per_call), calls


def peak_rss_mb():
  """Peak resident set size of this process so far, in MB (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def keras_train_step(model, optimizer, variables, xla):
  """A `tf.function` training step of a Keras 3 `optimizer` on the batch's mean NLL.

  `step(x)` minimises `-mean(model(x, training=True))` over `variables` (building the
  optimizer's slots now, outside the timed calls) and returns that loss.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  optimizer.build(variables)

  @tf.function(jit_compile=xla)
  def train_step(x):
    with tf.GradientTape() as tape:
      loss = -tf.reduce_mean(model(x, training=True))
    optimizer.apply(tape.gradient(loss, variables), variables)
    return loss

  return train_step


def fit_rates(model, x, batch_size, total_steps, warmup, repeats, steps):
  """Trains a compiled `model` by `fit` for one epoch of `total_steps` and times it.

  Per-batch timestamps from a callback exclude compilation: after the first step and
  `warmup` more, each of `repeats` windows of `steps` steps gives one steps/s rate.

  Returns:
    (seconds to the end of the first step, rates per repeat, the `fit` history).
  """
  import keras  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  stamps = []

  class Timer(keras.callbacks.Callback):

    def on_train_batch_end(self, batch, logs=None):
      stamps.append(time.perf_counter())

  dataset = (tf.data.Dataset.from_tensor_slices(x).repeat().shuffle(2048, seed=0)
             .batch(batch_size, drop_remainder=True).prefetch(4))
  start = time.perf_counter()
  history = model.fit(dataset, epochs=1, steps_per_epoch=total_steps, verbose=0,
                      callbacks=[Timer()])
  first = 1 + warmup
  rates = []
  for r in range(repeats):
    a = first + r * steps - 1
    rates.append(steps / (stamps[a + steps] - stamps[a]))
  return stamps[0] - start, rates, history


def eval_functions(distribution, batch_size, xla):
  """(`sample_fn(seed)`, `log_prob_fn(x)`) of a FlowModel or a TFP distribution.

  Both are `tf.function`s with the given XLA setting; `sample_fn` draws `batch_size`
  points with a stateless `seed`.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  @tf.function(jit_compile=xla)
  def sample_fn(seed):
    return distribution.sample(batch_size, seed=seed)

  @tf.function(jit_compile=xla)
  def log_prob_fn(x):
    return distribution.log_prob(x)

  return sample_fn, log_prob_fn


# The coupling NSF that the step profiles (xla_profile.py, nsf_floor.py) time, as the peer
# comparison's own step builds it: K = 8 bins on [-3, 3], MLPs 128 x 2, fixed reversals.
NSF_NUM_BINS = 8
NSF_HIDDEN = 128


def nsf_coupling_preset(dims, num_layers):
  """`tfp_flows.models.NeuralSplineFlow` as the step profiles time it (no ActNorm)."""
  import tfp_flows as tff  # pylint: disable=import-outside-toplevel
  return tff.models.NeuralSplineFlow(
      dims, num_layers=num_layers, num_bins=NSF_NUM_BINS, bound=3.0,
      hidden_units=(NSF_HIDDEN, NSF_HIDDEN), autoregressive=False, linear="permute",
      actnorm=False)


def vector_data(dims, batch_size):
  """All points and a fixed pool of float32 batches `[batch_size, dims]`.

  dims 64: scikit-learn's 8x8 digits, flattened, dequantised with U[0, 1) noise once and
  standardised; otherwise 2048 two-moons points. Batches are a seeded permutation.
  """
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  if dims == 64:
    from sklearn import datasets  # pylint: disable=import-outside-toplevel
    x = datasets.load_digits().data.astype(np.float64)  # [1797, 64], ints 0..16
    x = x + rng.uniform(size=x.shape)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
  else:
    from tfp_flows import data  # pylint: disable=import-outside-toplevel
    x = data.make_toy_2d("two_moons", 2048, seed=0).astype(np.float64)
  x = x.astype(np.float32)
  order = rng.permutation(len(x))
  num_batches = len(x) // batch_size
  return x, [x[order[i * batch_size:(i + 1) * batch_size]] for i in range(num_batches)]


def check_choices(flag, values, choices):
  """Raises `app.UsageError` for any of a list flag's `values` not among `choices`."""
  for value in values:
    if value not in choices:
      raise app.UsageError(f"--{flag} takes {'/'.join(choices)}; got {value!r}")


def warn_if_changed(fingerprint_before):
  """Prints a warning if the tfp_flows sources changed since `fingerprint()` was taken."""
  if fingerprint() != fingerprint_before:
    print("WARNING: the tfp_flows sources changed during the run; the cases may have "
          "measured different versions.")


# ------------------------------------------------------------------ worker processes


def emit(marker, fields):
  """Prints `fields` as one JSON line after `marker`, for the parent to parse."""
  print(marker + json.dumps(fields), flush=True)


def parse_result(stdout, marker):
  """The dict of the first line of `stdout` that starts with `marker`, or None."""
  for line in stdout.splitlines():
    if line.startswith(marker):
      return json.loads(line[len(marker):])
  return None


def worker_command(script, spec, argv_flags):
  """The command line that reruns `script` as a worker for case `spec`."""
  return [sys.executable, os.path.abspath(script), f"--worker={spec}"] + list(argv_flags)


def worker_env(onednn="default", **overrides):
  """The parent's environment with TF's logs quiet, `overrides`, and oneDNN on/off.

  Args:
    onednn: "default" (inherit TF_ENABLE_ONEDNN_OPTS), "on" or "off".
    **overrides: variables to set, e.g. TF_CPP_MIN_LOG_LEVEL="0".
  """
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  env.update(overrides)
  if onednn != "default":
    env["TF_ENABLE_ONEDNN_OPTS"] = "1" if onednn == "on" else "0"
  return env


# -------------------------------------------------------------------- machine load


def cpu_jiffies():
  """(busy, total) jiffies of the whole machine from /proc/stat."""
  with open("/proc/stat", encoding="utf-8") as f:
    fields = [int(v) for v in f.readline().split()[1:]]
  idle = fields[3] + fields[4]  # idle + iowait
  return sum(fields) - idle, sum(fields)


def busy_cores(seconds):
  """CPU cores in use by all processes over the next `seconds` (the caller sleeps)."""
  busy0, total0 = cpu_jiffies()
  time.sleep(seconds)
  busy1, total1 = cpu_jiffies()
  return (busy1 - busy0) / max(total1 - total0, 1) * os.cpu_count()


def wait_for_quiet(max_wait, max_cores):
  """Waits up to `max_wait` s until other processes use < `max_cores` cores; returns s waited."""
  if max_wait <= 0:
    return 0.0
  start = time.perf_counter()
  while time.perf_counter() - start < max_wait:
    if busy_cores(3.0) < max_cores:
      break
  return time.perf_counter() - start


def load_average():
  """The 1, 5 and 15 minute load averages, as /proc/loadavg prints them."""
  with open("/proc/loadavg", encoding="utf-8") as f:
    return " ".join(f.read().split()[:3])


class CpuMeter:
  """Measures a worker run: wall time, the worker's cores and other processes' cores.

  Create it just before starting the worker and call `stop()` once it has exited. The
  machine's busy time over the interval (from /proc/stat) minus the finished children's
  CPU time is what other processes used meanwhile: the load average would count our own
  TF threads, this does not.
  """

  def __init__(self):
    self._jiffies = cpu_jiffies()
    self._children = resource.getrusage(resource.RUSAGE_CHILDREN)
    self._start = time.perf_counter()

  def elapsed(self):
    return time.perf_counter() - self._start

  def stop(self):
    """{"wall_s", "worker_cores", "other_cores"} since construction."""
    wall = self.elapsed()
    busy1, total1 = cpu_jiffies()
    busy0, total0 = self._jiffies
    child0, child1 = self._children, resource.getrusage(resource.RUSAGE_CHILDREN)
    machine = (busy1 - busy0) / max(total1 - total0, 1) * os.cpu_count()
    worker = ((child1.ru_utime - child0.ru_utime) +
              (child1.ru_stime - child0.ru_stime)) / wall
    return {"wall_s": wall, "worker_cores": worker,
            "other_cores": max(machine - worker, 0.0)}


def fingerprint(root=None):
  """md5 (12 hex) over the tfp_flows sources under `root` (default: the importable one)."""
  if root is None:
    root = os.path.dirname(importlib.util.find_spec("tfp_flows").origin)  # no TF import
  digest = hashlib.md5()
  for folder, _, files in sorted(os.walk(root)):
    for name in sorted(files):
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        digest.update(os.path.relpath(path, root).encode())
        with open(path, "rb") as f:
          digest.update(f.read())
  return f"{root} md5 {digest.hexdigest()[:12]}"


def merge_rounds(runs, rate_keys=("train_rates", "sample_rates", "log_prob_rates")):
  """One case's results over several rounds: `runs[0]` with the repeats of `rate_keys`
  pooled and the largest peak RSS."""
  merged = dict(runs[0])
  for key in rate_keys:
    merged[key] = [r for run in runs for r in run[key]]
  merged["peak_rss_mb"] = max(run["peak_rss_mb"] for run in runs)
  return merged


# ------------------------------------------------------------------------- tables


def ratio(ours, reference):
  """`ours / reference` as "1.23x", or "-" when either is missing or zero."""
  return "-" if not ours or not reference else f"{ours / reference:.2f}x"


def spread(values):
  """"min / median / max" of per-repeat rates, aligned for a column of such lines."""
  return f"{min(values):7.1f} / {median(values):7.1f} / {max(values):7.1f}"


def table_header(header):
  """The header line and the separator line of a Markdown table with `header` columns."""
  return [header, "|" + "---|" * (header.count("|") - 1)]
