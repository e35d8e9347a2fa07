"""Where an FFJORD training step goes: field evaluations, compiled ops, time (issue 17).

The case of `benchmarks/peers/tfpflows_bench.py ffjord2d`: `tff.FlowModel([tff.layers.FFJORD(
hidden_units=(64, 64, 64), activation="tanh", trace="hutchinson", noise="gaussian",
solver="dopri5", rtol=1e-5, atol=1e-5, gradient="adjoint")], event_shape=[2])`, batch 256
of two moons, Keras Adam, a `tf.function` step over `-mean(model(x, training=True))`.

For each variant (ours, with the library's ODE module or, for an A/B, with `--compare`
copies of other versions of `tfp_flows/numerics/ode.py` and of the net swapped in; and stock
`tfb.FFJORD` over the same net and weights with `tfp.math.ode.DormandPrince` at the
same tolerance and Gaussian Hutchinson probes) it prints:

* field evaluations per training step: the forward solve's and all of them (a counter
  variable bumped in the field), so backward = all - forward (stock's forward count is
  its `num_ode_fn_evaluations`); ours also reports the adjoint's own count as the
  layer statistic "adjoint_nfe" where the library has it;
* with `--hlo`, the optimised HLO of the XLA step: instructions and fusions per
  while-loop body (the solver's step loops and, before the unrolled stages, the inner
  stage loops);
* steps/s: rounds of `--steps` steps, the variants interleaved round by round in one
  process (the machine is shared), medians over `--rounds` rounds after warm-up.

All variants start from the same weights: `--warm_steps` maximum-likelihood steps from
the identity field (the peer benchmark's 120 steps by default), taken once with the
library's solver, so the field is the one the peer benchmark times.

Usage:
  git show REV:tfp_flows/numerics/ode.py > /tmp/ode_rev.py
  git show REV:tfp_flows/nets/time_layers.py > /tmp/net_rev.py
  (before 2026-12-07 the layers were in tfp_flows/nets/time_conditioned.py)
  python benchmarks/ffjord_cost.py --hlo --compare=before=/tmp/ode_rev.py+/tmp/net_rev.py
"""

import collections
import importlib.util
import inspect
import re
import statistics
import sys
import time

from absl import app
from absl import flags
import numpy as np

_STEPS = flags.DEFINE_integer("steps", 10, "Training steps per timed round.")
_ROUNDS = flags.DEFINE_integer("rounds", 20, "Timed rounds per variant (interleaved).")
_WARM = flags.DEFINE_integer("warm_steps", 120, "Training steps before measuring.")
_XLA = flags.DEFINE_list("xla", ["on", "off"], "XLA settings of ours: on, off.")
_STOCK = flags.DEFINE_boolean("stock", True, "Also time stock tfb.FFJORD (graph mode).")
_HLO = flags.DEFINE_boolean("hlo", False, "Count the XLA step's HLO per loop body.")
_COMPARE = flags.DEFINE_list(
    "compare", [], "Variants to A/B against the library, each LABEL=ODE_PATH or "
    "LABEL=ODE_PATH+NET_PATH: a copy of another tfp_flows/numerics/ode.py, and optionally "
    "of the module holding ConcatSquashDense (tfp_flows/nets/time_layers.py, "
    "time_conditioned.py before 2026-12-07), whose methods the variant traces with.")
_RANDINIT = flags.DEFINE_boolean("random_init", False,
                                 "Start from a random field (re-drawn zero kernels).")
_BATCH = 256


def _moons(n, seed):
  rng = np.random.default_rng(seed)
  n1 = n // 2
  t1, t2 = rng.uniform(0, np.pi, n1), rng.uniform(0, np.pi, n - n1)
  x = np.concatenate([np.stack([np.cos(t1), np.sin(t1)], 1),
                      np.stack([1 - np.cos(t2), 0.5 - np.sin(t2)], 1)])
  x = x + 0.1 * rng.standard_normal((n, 2))
  return ((x - x.mean(0)) / x.std(0)).astype("float32")


def _load(path, name):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  adjoint = getattr(module, "integrate_adjoint", None)
  if adjoint and "backward_statistics" not in inspect.signature(adjoint).parameters:
    # An older solver without the backward statistics: drop the argument.
    module.integrate_adjoint = lambda *a, backward_statistics=None, **k: adjoint(*a, **k)
  return module


def _hlo_loops(text):
  """{body name: (instructions, fusions, dots)} for each while body of an HLO module."""
  bodies = set(re.findall(r"body=%?([\w.\-]+)", text))
  counts, name, lines = {}, None, []
  for line in text.splitlines():
    head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
    if head:
      name, lines = head.group(1), []
      continue
    if line.startswith("}") and name is not None:
      if name in bodies:
        ops = [l for l in lines if "=" in l]
        counts[name] = (len(ops), sum(" fusion(" in l for l in ops),
                        sum(" dot(" in l or "custom-call(" in l for l in ops))
      name = None
      continue
    if name is not None:
      lines.append(line)
  # Dots inside fusions are counted in the fused computations, not here.
  return counts


def main(argv):
  del argv
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.config.threading.set_intra_op_parallelism_threads(2)
  tf.config.threading.set_inter_op_parallelism_threads(2)
  import keras  # pylint: disable=import-outside-toplevel
  import tensorflow_probability as tfp  # pylint: disable=import-outside-toplevel
  import tfp_flows as tff  # pylint: disable=import-outside-toplevel
  from tfp_flows.bijectors import continuous  # pylint: disable=import-outside-toplevel
  tfb, tfd = tfp.bijectors, tfp.distributions

  keras.utils.set_random_seed(0)
  data = _moons(_BATCH * 20, seed=1)
  pool = [tf.constant(data[i * _BATCH:(i + 1) * _BATCH]) for i in range(20)]
  library_ode = continuous.ode
  dense = tff.nets.ConcatSquashDense
  library_net = (dense.call, dense.call_with_tangents)
  modules = {"ours": (library_ode, library_net)}
  for i, spec in enumerate(_COMPARE.value):
    label, paths = spec.split("=", 1)
    ode_path, _, net_path = paths.partition("+")
    net = library_net
    if net_path:
      other = _load(net_path, f"net_compare_{i}").ConcatSquashDense
      net = (other.call, other.call_with_tangents)
    modules[label] = (_load(ode_path, f"ode_compare_{i}"), net)

  def build():
    model = tff.FlowModel([tff.layers.FFJORD(
        hidden_units=(64, 64, 64), activation="tanh", trace="hutchinson", noise="gaussian",
        solver="dopri5", rtol=1e-5, atol=1e-5, gradient="adjoint")], event_shape=[2])
    return model

  model = build()
  layer = model.flow_layers[0]
  variables = model.trainable_variables
  if _RANDINIT.value:
    init = keras.initializers.GlorotUniform(seed=0)
    for v in variables:
      if len(v.shape) == 2 and not np.any(v.numpy()):
        v.assign(init(v.shape))
  counter = tf.Variable(0, dtype=tf.int64, trainable=False)
  net = layer.net
  plain_call, tangent_call = net.call, net.call_with_tangents

  def counted(fn):
    def field(*args, **kwargs):
      with tf.control_dependencies([counter.assign_add(1)]):
        return fn(*args, **kwargs)
    return field

  net.call_with_tangents = counted(tangent_call)

  def make_step(variant, jit, opt):
    module, (call, call_with_tangents) = variant
    def step(x):
      # The variant's solver and net methods are what this trace sees.
      continuous.ode = module
      dense.call, dense.call_with_tangents = call, call_with_tangents
      try:
        with tf.GradientTape() as tape:
          loss = -tf.reduce_mean(model(x, training=True))
        grads = tape.gradient(loss, variables)
      finally:
        continuous.ode = library_ode
        dense.call, dense.call_with_tangents = library_net
      opt.apply(grads, variables)
      stats = layer.last_statistics
      return loss, stats["nfe"], stats.get("adjoint_nfe", tf.constant(-1.0))
    return tf.function(step, jit_compile=jit)

  warm_opt = keras.optimizers.Adam(1e-3)
  warm = make_step(modules["ours"], True, warm_opt)
  for i in range(_WARM.value):
    warm(pool[i % 20])
  weights = [v.numpy() for v in variables]

  stock_nfe = []
  stock_solver = tfp.math.ode.DormandPrince(rtol=1e-5, atol=1e-5, max_num_steps=1000)

  def stock_solve(**kwargs):
    results = stock_solver.solve(**kwargs)
    stock_nfe.append(results.diagnostics.num_ode_fn_evaluations)
    return results

  stock_bijector = tfb.FFJORD(counted(lambda t, z: plain_call(z, t)),
                              ode_solve_fn=stock_solve,
                              trace_augmentation_fn=tfb.ffjord.trace_jacobian_hutchinson,
                              dtype=tf.float32)
  stock_dist = tfd.TransformedDistribution(tfd.Sample(tfd.Normal(0.0, 1.0), [2]),
                                           stock_bijector)

  def make_stock_step(opt):
    def step(x):
      del stock_nfe[:]
      with tf.GradientTape() as tape:
        loss = -tf.reduce_mean(stock_dist.log_prob(x))
      grads = tape.gradient(loss, variables)
      opt.apply(grads, variables)
      return loss, tf.cast(stock_nfe[0], tf.float32), tf.constant(-1.0)
    return tf.function(step)

  variants = collections.OrderedDict()
  for label, variant in modules.items():
    for xla in _XLA.value:
      variants[f"{label} {'xla' if xla == 'on' else 'graph'}"] = (
          make_step(variant, xla == "on", keras.optimizers.Adam(1e-3)))
  if _STOCK.value:
    variants["stock graph"] = make_stock_step(keras.optimizers.Adam(1e-3))

  def reset():
    for v, w in zip(variables, weights):
      v.assign(w)

  print(f"# field after {_WARM.value} warm-up steps; evaluations per training step "
        "(forward / all / backward = all - forward; adjoint_nfe = the library's statistic)")
  for name, step in variants.items():
    reset()
    counts = []
    start = time.perf_counter()
    for i in range(5):
      before = counter.numpy()
      _, nfe, adjoint = step(pool[i])
      counts.append((float(nfe), int(counter.numpy() - before), float(adjoint)))
      if i == 0:
        first = time.perf_counter() - start
    print(f"{name:22s} " + "  ".join(f"{f:.0f}/{a}/{a - f:.0f} ({b:.0f})" for f, a, b in counts)
          + f"   first call (trace + compile) {first:.1f} s")

  if _HLO.value:
    for name, step in variants.items():
      if "xla" not in name:
        continue
      text = step.experimental_get_compiler_ir(pool[0])(stage="optimized_hlo")
      loops = _hlo_loops(text)
      total = sum(1 for l in text.splitlines() if re.match(r"^\s+%?[\w.\-]+ = ", l))
      print(f"# HLO {name}: {total} instructions in the module; while bodies "
            "(instructions, fusions, dots/custom-calls outside fusions):")
      for body, (n, fusions, dots) in sorted(loops.items(), key=lambda kv: -kv[1][0]):
        print(f"   {body:60s} {n:5d} {fusions:5d} {dots:4d}")

  reset()
  for step in variants.values():   # compile and warm up
    for i in range(3):
      step(pool[i])
  times = collections.defaultdict(list)
  for r in range(_ROUNDS.value):
    for name, step in variants.items():
      start = time.perf_counter()
      for i in range(_STEPS.value):
        out = step(pool[(r * _STEPS.value + i) % 20])
      float(out[0])
      times[name].append(_STEPS.value / (time.perf_counter() - start))
  print(f"# steps/s, median [min, max] of {_ROUNDS.value} interleaved rounds of "
        f"{_STEPS.value} steps (shared machine)")
  for name, rates in times.items():
    print(f"{name:22s} {statistics.median(rates):7.1f} [{min(rates):.1f}, {max(rates):.1f}]")
  sys.stdout.flush()


if __name__ == "__main__":
  app.run(main)
