"""Where does an XLA-compiled NSF step spend its time, kernel by kernel?

Profiles the neural spline flow preset's training step (value, gradient and Adam, as
the peer comparison's own step) or its sampling pass under `jit_compile=True` with
TensorFlow's profiler, and maps each XLA kernel the CPU runtime executed to the
TensorFlow op it came from. Prints the executable's wall time per call, the busy time
summed over threads per category (matmuls, the spline coupling, the conditioner's
elementwise work, the optimizer, the rest) and the most expensive kernels with their
ops. A kernel far slower than its element count suggests is one XLA did not vectorise:
that is how the spline's strided [..., 2, K] exponential showed up (RESULTS.md).

Usage: python benchmarks/xla_profile.py [--dims=64] [--layers=8] [--mode=train|sample]
  [--calls=30] [--top=30]
"""

import collections
import glob
import os
import re
import tempfile

from absl import app
from absl import flags

import _harness

_DIMS = flags.DEFINE_integer("dims", 64, "Event size D of the NSF preset.")
_LAYERS = flags.DEFINE_integer("layers", 8, "Coupling layers.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "sample"],
                          "train (one Adam step) or sample (the forward pass of 10,000 draws).")
_CALLS = flags.DEFINE_integer("calls", 30, "Profiled calls, after 20 warm-up calls.")
_TOP = flags.DEFINE_integer("top", 30, "Kernels to list.")

BATCH = 256
SAMPLES = 10_000


def _category(kernel, op_name):
  """A kernel's part of the step, from its name and op. The spline's closed-form
  gradient builds its ops outside any layer's name scope: they count as "other"."""
  if "Tensordot" in op_name:  # the spline's partial sums
    return "spline coupling"
  if kernel.startswith(("MatMul", "dot", "ynn_fusion", "convolution")):
    return "matmul"
  if "optimizer" in op_name.lower() or "adam" in op_name.lower():
    return "optimizer"
  if "conditioner" in op_name:
    return "conditioner elementwise"
  if "spline_coupling" in op_name or "gradients/" in op_name:
    return "spline coupling"
  return "other"


def _kernel_ops(optimized_hlo):
  """HLO instruction name -> the TF op_name of its metadata ("" without one)."""
  ops = {}
  for m in re.finditer(r"\n\s+(?:ROOT )?%([\w.\-]+) = ([^\n]*)", optimized_hlo):
    op_name = re.search(r"op_name=\"([^\"]*)\"", m.group(2))
    ops[m.group(1)] = op_name.group(1) if op_name else ""
  return ops


def _kernel_times(logdir, calls, kernels):
  """Microseconds per call summed over threads for each name in `kernels`, and the
  executable's wall time per call."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=import-outside-toplevel
  space = xplane_pb2.XSpace()
  with open(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0],
            "rb") as f:
    space.ParseFromString(f.read())
  times, wall = collections.Counter(), 0.0
  for plane in space.planes:
    for line in plane.lines:
      for event in line.events:
        name = plane.event_metadata[event.metadata_id].name
        micros = event.duration_ps / 1e6 / calls
        if name == "CpuExecutable::ExecuteAsyncOnStream":
          wall += micros
        elif name in kernels:
          times[name] += micros
  return times, wall


def main(argv):
  del argv
  import keras  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  dims = _DIMS.value
  model = _harness.nsf_coupling_preset(dims, _LAYERS.value)
  if _MODE.value == "train":
    fn = _harness.keras_train_step(model, keras.optimizers.Adam(1e-3),
                                   model.trainable_variables, xla=True)
    arg = tf.constant(np.random.default_rng(0).normal(size=(BATCH, dims)), tf.float32)
  else:
    fn = tf.function(lambda z: model.bijector.forward(z), jit_compile=True)  # pylint: disable=unnecessary-lambda
    arg = tf.random.stateless_normal([SAMPLES, dims], seed=[0, 0])
  for _ in range(20):
    _harness.sync(fn(arg))
  calls = _CALLS.value
  with tempfile.TemporaryDirectory() as logdir:
    tf.profiler.experimental.start(logdir)
    for _ in range(calls):
      out = fn(arg)
    _harness.sync(out)
    tf.profiler.experimental.stop()
    ops = _kernel_ops(fn.experimental_get_compiler_ir(arg)(stage="optimized_hlo"))
    times, wall = _kernel_times(logdir, calls, ops)
  categories = collections.Counter()
  for kernel, micros in times.items():
    categories[_category(kernel, ops.get(kernel, ""))] += micros
  print(f"NSF D={dims}, {_LAYERS.value} layers, {_MODE.value}: executable "
        f"{wall:.0f} us per call (wall); kernels {sum(times.values()):.0f} us summed "
        "over threads")
  for name, micros in categories.most_common():
    print(f"  {micros:9.0f} us  {name}")
  print(f"top {_TOP.value} kernels (us per call, summed over threads):")
  for kernel, micros in times.most_common(_TOP.value):
    print(f"  {micros:9.1f}  {kernel:36s} {ops.get(kernel, '')[-80:]}")


if __name__ == "__main__":
  app.run(main)
