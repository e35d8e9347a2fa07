"""FFJORD benchmark: tfp_flows' FFJORDFlow against stock `tfb.FFJORD` driven the same way.

DESIGN's FFJORD case: 2-D two moons, one continuous block whose vector field is a
concat-squash MLP 64x3 (softplus), dopri5 with rtol = atol = 1e-5, batch 256, Adam,
float32, Hutchinson trace with one Rademacher probe per row in training, gradients by
the adjoint method, the exact trace for `log_prob`.

* `ours`: `tfp_flows.models.FFJORDFlow([2], hidden_units=(64, 64, 64),
  trace="hutchinson", solver="dopri5", rtol, atol, actnorm=False, gradient="adjoint",
  max_num_steps=1000)`, trained by a custom `tf.function` step (GradientTape over
  `-mean(model(x, training=True))`, Keras 3 Adam `apply`). `log_prob` is
  `model.log_prob` (exact trace in 2-D).
* `stock`: `tfd.TransformedDistribution(tfd.Sample(tfd.Normal(0, 1), [2]),
  tfb.FFJORD(f, ode_solve_fn=DormandPrince(rtol, atol, max_num_steps=1000).solve,
  trace_augmentation_fn=...))` where `f(t, z)` is the *same* network class
  (`tfp_flows.nets.TimeConditionedMLP`, same weights), the training trace is
  `tfb.ffjord.trace_jacobian_hutchinson` with Rademacher probes
  (`tfp.random.rademacher`, ours' default) and the evaluation trace
  `tfb.ffjord.trace_jacobian_exact`. Stock's solver differentiates by its own adjoint
  method. Trained by the same kind of step with the same Keras 3 Adam.
* `fm`, `fm_ot` (ours only; stock has no such mode): one flow-matching step of the same
  model, `layer.flow_matching_loss(x, optimal_transport=...)`, no ODE solve.
* `fit` (ours): `model.compile(jit_compile=...)` + `model.fit` on the same batches, the
  path the examples use (steps/s from per-batch timestamps; compilation excluded).

Both start from the same weights: a field pretrained by 400 flow-matching steps (done
once per run in its own process), so that the solves take a realistic number of steps
rather than the few an identity field needs. The two solvers differ in one way the
tolerances cannot hide: ours controls the error per row (each row its own step size),
stock's DormandPrince takes one step size for the batch, controlled by the RMS error
over all rows; so at equal rtol/atol ours solves every row to the tolerance and stock
solves the batch on average.

Every vector-field evaluation (forward solve, initial-step probes, adjoint solve) bumps
a counter variable inside `f`, identically for both, so "evals/step" counts every
evaluation of the augmented dynamics a step makes; "fwd NFE" is what each solver
reports for its forward solve (ours `num_evaluations`, stock
`diagnostics.num_ode_fn_evaluations`). Function evaluations per second = evals/step x
steps/s: the fair rate when the two solvers take different numbers of steps.

Each case runs in its own subprocess, training and evaluation (`log_prob`, `sample`)
in separate ones, so a compile that does not finish (stock's XLA compile did not in
6.5 minutes in DESIGN's measurement) is killed after `--compile_timeout` seconds and
reported as "did not finish in N s" without losing the other measurements. Reported:
training steps/s (median of repeats after warm-up), the first call's time (tracing +
compile), evals/step and evaluations/s, `log_prob` points/s, `sample` samples/s, ratios
ours/stock at the same XLA setting, losses, and the cores *other* processes used
meanwhile (the machine is shared; `--quiet_wait` delays each case until it is idle).

Separate processes measured minutes apart can disagree by 1.5x on this shared machine,
so `--interleaved` runs ours and stock in one process instead and alternates rounds of
each (ours with and without XLA; stock without, since its XLA compile does not finish),
giving per-round ratios that load changes hit alike.

Usage:
  python benchmarks/ffjord_benchmark.py                   # full run
  python benchmarks/ffjord_benchmark.py --interleaved     # ours vs stock, same process
  python benchmarks/ffjord_benchmark.py --quick           # fewer repeats and steps
  python benchmarks/ffjord_benchmark.py --quiet_wait=300  # wait for an idle machine per case
  python benchmarks/ffjord_benchmark.py --cases=ours,stock --xla=on --compile_timeout=600
"""

import functools
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time

from absl import app
from absl import flags

import _harness

_QUICK = flags.DEFINE_boolean("quick", False, "Fewer repeats and steps.")
_CASES = flags.DEFINE_list("cases", ["ours", "stock", "fm", "fm_ot", "fit"],
                           "Cases among ours, stock, fm, fm_ot, fit.")
_XLA = flags.DEFINE_list("xla", ["off", "on"], "XLA settings to run: off, on.")
_REPEATS = flags.DEFINE_integer("repeats", None, "Timed repeats (default 5, quick 3).")
_STEPS = flags.DEFINE_integer("steps_per_repeat", None,
                              "Training steps per timed repeat (default 10, quick 5; "
                              "flow matching x20).")
_WARMUP = flags.DEFINE_integer("warmup_steps", 3, "Untimed steps after the first call.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Batch size.")
_LR = flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
_RTOL = flags.DEFINE_float("rtol", 1e-5, "dopri5 relative tolerance (both).")
_ATOL = flags.DEFINE_float("atol", 1e-5, "dopri5 absolute tolerance (both).")
_PRETRAIN = flags.DEFINE_integer("pretrain_steps", 400,
                                 "Flow-matching steps that produce the shared starting "
                                 "weights (0: the identity field at initialisation).")
_COMPILE_TIMEOUT = flags.DEFINE_integer(
    "compile_timeout", 300, "Kill a case whose first call (trace + compile) has not "
    "finished after this many seconds, and report it as not finished.")
_CASE_TIMEOUT = flags.DEFINE_integer(
    "case_timeout", 1200, "Kill a case still running after this many seconds (its "
    "figures so far are kept).")
_VERBOSE = flags.DEFINE_boolean("verbose", False, "Echo the workers' result lines.")
_QUIET_WAIT = flags.DEFINE_integer(
    "quiet_wait", 0, "Before each case, wait up to this many seconds until other "
    "processes use less than --quiet_cores CPU cores (the machine is shared).")
_QUIET_CORES = flags.DEFINE_float("quiet_cores", 0.3,
                                  "CPU cores other processes may use for --quiet_wait.")
_INTERLEAVED = flags.DEFINE_boolean(
    "interleaved", False, "Instead of the cases: ours (per --xla) and stock (without XLA) "
    "in one process, alternating rounds of training steps and log_prob calls, so load "
    "changes hit both alike; reports per-round ratios.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the results as JSON here.")
_WEIGHTS = flags.DEFINE_string("weights", None, "Internal: the shared starting weights.")
_WORKER = flags.DEFINE_string("worker", None,
                              "Internal: run one case, e.g. ours:on:train, or pretrain.")

_MARKER = "FFJORD_BENCHMARK "
_HIDDEN = (64, 64, 64)
_MAX_NUM_STEPS = 1000
_IMPLS = ("ours", "stock", "fm", "fm_ot", "fit")


# ----------------------------------------------------------------------------- worker


def _settings():
  quick = _QUICK.value
  steps = _STEPS.value or (5 if quick else 10)
  return {
      "repeats": _REPEATS.value or (3 if quick else 5),
      "steps": steps,
      "fm_steps": 20 * steps,
      "warmup": _WARMUP.value,
      "eval_repeats": 3 if quick else 5,
      "eval_seconds": 0.5 if quick else 1.0,
  }


def _emit(**fields):
  _harness.emit(_MARKER, fields)


def _load_batches(batch_size, num_batches=16):
  import numpy as np  # pylint: disable=import-outside-toplevel
  from tfp_flows import data  # pylint: disable=import-outside-toplevel
  x = data.make_toy_2d("two_moons", batch_size * num_batches, seed=0).astype(np.float32)
  return [x[i * batch_size:(i + 1) * batch_size] for i in range(num_batches)]


def _build_ours():
  import tfp_flows as tff  # pylint: disable=import-outside-toplevel
  return tff.models.FFJORDFlow([2], hidden_units=_HIDDEN, trace="hutchinson",
                               solver="dopri5", rtol=_RTOL.value, atol=_ATOL.value,
                               actnorm=False, gradient="adjoint",
                               max_num_steps=_MAX_NUM_STEPS)


def _run_pretrain(path):
  """Flow-matching steps from the preset's initialisation; saves the field's weights."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import keras  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  keras.utils.set_random_seed(0)
  model = _build_ours()
  layer = model.flow_layers[-1]
  variables = layer.trainable_variables
  optimizer = keras.optimizers.Adam(3e-3)
  optimizer.build(variables)
  batches = [tf.constant(b) for b in _load_batches(_BATCH.value)]

  @tf.function(jit_compile=True)
  def step(x, seed):
    with tf.GradientTape() as tape:
      loss = layer.flow_matching_loss(x, seed=seed)
    optimizer.apply(tape.gradient(loss, variables), variables)
    return loss

  loss = None
  for i in range(_PRETRAIN.value):
    loss = step(batches[i % len(batches)], tf.constant([11, i], tf.int32))
  np.savez(path, *layer.net.get_weights())
  _emit(pretrain_loss=None if loss is None else float(loss))


def _weights(path):
  import numpy as np  # pylint: disable=import-outside-toplevel
  with np.load(path) as f:
    return [f[f"arr_{i}"] for i in range(len(f.files))]


def _counted(fn, counter):
  """`fn(t, z, ...)` that adds 1 to `counter` per evaluation."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  def field(*args):
    with tf.control_dependencies([counter.assign_add(1)]):
      return fn(*args)

  return field


def _build_stock(net, counter, fwd_nfe, trace):
  """Stock TFP FFJORD over `net`; appends each forward solve's NFE to `fwd_nfe`."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import tensorflow_probability as tfp  # pylint: disable=import-outside-toplevel
  tfb, tfd = tfp.bijectors, tfp.distributions
  solver = tfp.math.ode.DormandPrince(rtol=_RTOL.value, atol=_ATOL.value,
                                      max_num_steps=_MAX_NUM_STEPS)

  def ode_solve_fn(**kwargs):
    results = solver.solve(**kwargs)
    fwd_nfe.append(results.diagnostics.num_ode_fn_evaluations)
    return results

  if trace == "exact":
    augmentation = tfb.ffjord.trace_jacobian_exact
  else:
    augmentation = functools.partial(
        tfb.ffjord.trace_jacobian_hutchinson,
        sample_fn=lambda shape, dtype, seed: tfp.random.rademacher(shape, dtype, seed))
  field = _counted(lambda t, z: net(z, t), counter)
  bijector = tfb.FFJORD(field, ode_solve_fn=ode_solve_fn,
                        trace_augmentation_fn=augmentation, dtype=tf.float32)
  return tfd.TransformedDistribution(tfd.Sample(tfd.Normal(0.0, 1.0), [2]), bijector)


def _timed_rates(fn, args_list, repeats, seconds, items_per_call, counter):
  """items/s of `fn` per repeat (calls sized to ~`seconds`) and counter bumps per call."""
  calls = _harness.calls_for_duration(fn, args_list, seconds)
  before = int(counter.numpy())
  rates = _harness.timed_calls(fn, args_list, repeats, calls, items_per_call)
  return rates, calls, (int(counter.numpy()) - before) / (repeats * calls)


def _build_case(impl, cfg, weights, counter, fwd_nfe):
  """(model, variables, train_loss, log_prob, sample) of `impl` from shared `weights`."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tfp_flows import nets  # pylint: disable=import-outside-toplevel
  model = None
  if impl == "stock":
    net = nets.TimeConditionedMLP(_HIDDEN)
    net.build((None, 2))
    net.set_weights(weights)
    variables = net.trainable_variables
    train_dist = _build_stock(net, counter, fwd_nfe, "hutchinson")
    eval_dist = _build_stock(net, counter, fwd_nfe, "exact")

    def train_loss(x):
      loss = -tf.reduce_mean(train_dist.log_prob(x))
      return loss, tf.cast(fwd_nfe[-1], tf.float32)

    def log_prob(x):
      return eval_dist.log_prob(x)

    def sample(seed):
      # Stock's forward always integrates a trace too; the one-probe one is its cheapest.
      return train_dist.sample(cfg["batch"], seed=seed)
  else:
    model = _build_ours()
    layer = model.flow_layers[-1]
    layer.net.set_weights(weights)
    # The layer builds its bijector from `self.vector_field` and, for the trace, the
    # net's forward-mode products `self.vector_field_with_tangents`; counting wraps both.
    layer.vector_field = _counted(lambda t, z: layer.net(z, t), counter)
    layer.vector_field_with_tangents = _counted(
        lambda t, z, v: layer.net.call_with_tangents(z, t, v), counter)
    variables = model.trainable_variables

    def train_loss(x):
      if impl in ("fm", "fm_ot"):
        return layer.flow_matching_loss(x, optimal_transport=impl == "fm_ot"), 0.0
      loss = -tf.reduce_mean(model(x, training=True))
      return loss, layer.last_statistics["nfe"]

    def log_prob(x):
      return model.log_prob(x)

    def sample(seed):
      return model.sample(cfg["batch"], seed=seed)

  return model, variables, train_loss, log_prob, sample


def _train_step(variables, train_loss, learning_rate):
  """One Adam step on `train_loss` (a plain function, for `tf.function`)."""
  import keras  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  optimizer = keras.optimizers.Adam(learning_rate)
  optimizer.build(variables)

  def train_step(x):
    with tf.GradientTape() as tape:
      loss, _ = train_loss(x)
    optimizer.apply(tape.gradient(loss, variables), variables)
    return loss

  return train_step


def _run_duel(xla_name):
  """Ours (XLA per `xla_name`) and stock (without XLA) in one process, interleaved.

  Rounds alternate `steps` training steps (then log_prob calls) of each, so both see the
  same machine state; reports per-round rates and the per-round ratios.
  """
  import keras  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  cfg = dict(_settings(), batch=_BATCH.value, lr=_LR.value)
  keras.utils.set_random_seed(0)
  batches = [tf.constant(b) for b in _load_batches(cfg["batch"])]
  weights = _weights(_WEIGHTS.value)
  counter = tf.Variable(0, dtype=tf.int64, trainable=False)
  steps, calls = {}, {}
  for impl, jit in (("ours", xla_name == "on"), ("stock", False)):
    _, variables, train_loss, log_prob, _ = _build_case(impl, cfg, weights, counter, [])
    steps[impl] = tf.function(_train_step(variables, train_loss, cfg["lr"]),
                              jit_compile=jit)
    calls[impl] = tf.function(log_prob, jit_compile=jit)
    for _ in range(1 + cfg["warmup"]):
      _harness.sync(steps[impl](batches[0]))
      _harness.sync(calls[impl](batches[0]))
  rounds = {("train", impl): [] for impl in steps}
  rounds.update({("log_prob", impl): [] for impl in steps})
  evals = {key: [] for key in rounds}
  for r in range(2 * cfg["repeats"]):
    for impl in (("ours", "stock") if r % 2 == 0 else ("stock", "ours")):
      for part, fn, count, items in (("train", steps[impl], cfg["steps"], 1),
                                     ("log_prob", calls[impl], 4 * cfg["steps"],
                                      cfg["batch"])):
        before = int(counter.numpy())
        begin = time.perf_counter()
        for i in range(count):
          out = fn(batches[(r + i) % len(batches)])
        _harness.sync(out)
        rounds[(part, impl)].append(items * count / (time.perf_counter() - begin))
        evals[(part, impl)].append((int(counter.numpy()) - before) / count)
  _emit(duel={f"{part}:{impl}": {"rates": rates, "evals": evals[(part, impl)]}
              for (part, impl), rates in rounds.items()})


def _run_worker(spec):
  """Runs one case (`impl:xla:part`); prints JSON lines prefixed by _MARKER."""
  impl, xla_name, part = spec.split(":")
  xla = xla_name == "on"
  cfg = dict(_settings(), batch=_BATCH.value, lr=_LR.value)
  import numpy as np  # pylint: disable=import-outside-toplevel
  import keras  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  keras.utils.set_random_seed(0)
  tf.random.set_seed(0)
  batches = [tf.constant(b) for b in _load_batches(cfg["batch"])]
  weights = _weights(_WEIGHTS.value)
  counter = tf.Variable(0, dtype=tf.int64, trainable=False)
  fwd_nfe = []
  model, variables, train_loss, log_prob, sample = _build_case(impl, cfg, weights,
                                                               counter, fwd_nfe)
  optimizer = keras.optimizers.Adam(cfg["lr"])
  optimizer.build(variables)
  _emit(num_params=int(sum(np.prod(v.shape) for v in variables)))

  if part == "eval":
    log_prob_fn = tf.function(log_prob, jit_compile=xla)
    sample_fn = tf.function(sample, jit_compile=xla)
    _emit(phase="log_prob_compile", event="start")
    start = time.perf_counter()
    values = log_prob_fn(batches[0]).numpy()
    _emit(phase="log_prob_compile", event="end", log_prob_first_call_s=time.perf_counter()
          - start, init_nll=-float(np.mean(values)), log_prob_finite=bool(
              np.isfinite(values).all()))
    rates, calls, evals = _timed_rates(log_prob_fn, [(b,) for b in batches],
                                       cfg["eval_repeats"], cfg["eval_seconds"],
                                       cfg["batch"], counter)
    _emit(log_prob_rates=rates, log_prob_calls=calls, log_prob_evals=evals)
    seeds = [(tf.constant([7, i], tf.int32),) for i in range(4)]
    _emit(phase="sample_compile", event="start")
    start = time.perf_counter()
    samples = sample_fn(*seeds[0]).numpy()
    _emit(phase="sample_compile", event="end",
          sample_first_call_s=time.perf_counter() - start,
          samples_finite=bool(np.isfinite(samples).all()))
    rates, calls, evals = _timed_rates(sample_fn, seeds, cfg["eval_repeats"],
                                       cfg["eval_seconds"], cfg["batch"], counter)
    _emit(sample_rates=rates, sample_calls=calls, sample_evals=evals,
          peak_rss_mb=_harness.peak_rss_mb())
    return

  steps = cfg["fm_steps"] if impl in ("fm", "fm_ot") else cfg["steps"]
  if impl == "fit":
    _run_fit(model, optimizer, batches, cfg, xla, counter)
    return

  @tf.function(jit_compile=xla)
  def train_step(x):
    with tf.GradientTape() as tape:
      loss, nfe = train_loss(x)
    optimizer.apply(tape.gradient(loss, variables), variables)
    return loss, nfe

  _emit(phase="train_compile", event="start")
  start = time.perf_counter()
  loss, _ = train_step(batches[0])
  _harness.sync(loss)
  _emit(phase="train_compile", event="end", first_call_s=time.perf_counter() - start,
        first_step_loss=float(loss))
  done = 1
  for _ in range(cfg["warmup"]):
    out = train_step(batches[done % len(batches)])
    done += 1
  _harness.sync(out)
  rates, losses, nfes, evals = [], [], [], []
  for _ in range(cfg["repeats"]):
    before = int(counter.numpy())
    outs = []
    begin = time.perf_counter()
    for _ in range(steps):
      outs.append(train_step(batches[done % len(batches)]))
      done += 1
    _harness.sync(outs[-1])
    rates.append(steps / (time.perf_counter() - begin))
    evals.append((int(counter.numpy()) - before) / steps)
    losses.append(float(np.mean([o[0].numpy() for o in outs])))
    nfes.append(float(np.mean([float(o[1]) for o in outs])))
  _emit(train_rates=rates, repeat_losses=losses, fwd_nfe=nfes, evals_per_step=evals,
        train_steps_total=done,
        peak_rss_mb=_harness.peak_rss_mb())


def _run_fit(model, optimizer, batches, cfg, xla, counter):
  """`model.fit` on the same batches; rates from per-batch timestamps."""
  import keras  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  total = 1 + cfg["warmup"] + cfg["repeats"] * cfg["steps"]
  stamps, counts, nfes = [], [], []

  class Timer(keras.callbacks.Callback):

    def on_train_batch_end(self, batch, logs=None):
      stamps.append(time.perf_counter())
      counts.append(int(counter.numpy()))
      nfes.append(float(logs["nfe"]))

  model.compile(optimizer=optimizer, jit_compile=xla)
  ds = tf.data.Dataset.from_tensor_slices(np.concatenate(batches)).batch(
      cfg["batch"], drop_remainder=True).repeat()
  _emit(phase="train_compile", event="start")
  start = time.perf_counter()
  history = model.fit(ds, epochs=1, steps_per_epoch=total, verbose=0, callbacks=[Timer()])
  first = 1 + cfg["warmup"]
  rates, evals = [], []
  for r in range(cfg["repeats"]):
    a = first + r * cfg["steps"] - 1
    b = a + cfg["steps"]
    rates.append(cfg["steps"] / (stamps[b] - stamps[a]))
    evals.append((counts[b] - counts[a]) / cfg["steps"])
  # `fit` logs running means; the last nll is the mean over the whole run.
  _emit(phase="train_compile", event="end", first_call_s=stamps[0] - start,
        first_step_loss=None, train_rates=rates, evals_per_step=evals,
        fwd_nfe=[float(np.mean(nfes[first:]))], repeat_losses=[
            None, float(history.history["nll"][-1])], train_steps_total=total,
        peak_rss_mb=_harness.peak_rss_mb())


# ----------------------------------------------------------------------------- parent


def _spawn(spec, argv_flags):
  """Runs a worker; kills it if a compile phase outlasts --compile_timeout.

  Returns the merged JSON fields it printed, plus wall time, CPU shares and, if it was
  killed, `timeout` = (phase, seconds).
  """
  meter = _harness.CpuMeter()
  proc = subprocess.Popen(_harness.worker_command(__file__, spec, argv_flags),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=_harness.worker_env())
  lines = queue.Queue()
  stderr = []
  threading.Thread(target=lambda: [lines.put(l) for l in proc.stdout] + [lines.put(None)],
                   daemon=True).start()
  threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True).start()
  out, phase, phase_start = {}, None, None
  while True:
    try:
      line = lines.get(timeout=1.0)
    except queue.Empty:
      now = time.perf_counter()
      if phase and now - phase_start > _COMPILE_TIMEOUT.value:
        out["timeout"] = (phase, _COMPILE_TIMEOUT.value)
      elif meter.elapsed() > _CASE_TIMEOUT.value:
        out["timeout"] = ("case", _CASE_TIMEOUT.value)
      else:
        continue
      proc.kill()
      proc.wait()
      break
    if line is None:
      proc.wait()
      break
    if not line.startswith(_MARKER):
      continue
    if _VERBOSE.value:
      print(f"    [{meter.elapsed():.0f}s] {line.strip()}", flush=True)
    fields = json.loads(line[len(_MARKER):])
    if fields.get("event") == "start":
      phase, phase_start = fields["phase"], time.perf_counter()
    elif fields.get("event") == "end":
      phase = None
    fields.pop("event", None)
    fields.pop("phase", None)
    out.update(fields)
  out.update(meter.stop())
  if "timeout" not in out and proc.returncode != 0:
    sys.stderr.write("".join(stderr)[-8000:])
    raise RuntimeError(f"worker {spec} failed with exit code {proc.returncode}")
  return out


def _fmt(value, spec):
  return "-" if value is None else format(value, spec)


def _not_finished(r, phase):
  if r.get("timeout") and r["timeout"][0] == phase:
    return f"did not finish in {r['timeout'][1]} s"
  return None


def _train_row(impl, xla, r, reference):
  """A training-table row; ratios against `reference` (stock, or ours' ML step for fm)."""
  flow_matching = impl in ("fm", "fm_ot")
  rate = _harness.median(r["train_rates"]) if "train_rates" in r else None
  evals = (_harness.median(r["evals_per_step"])
           if "evals_per_step" in r and not flow_matching else None)
  eps = rate * evals if rate and evals else None
  ref_rate = (_harness.median(reference["train_rates"])
              if reference and "train_rates" in reference else None)
  ref_evals = (_harness.median(reference["evals_per_step"])
               if reference and "evals_per_step" in reference else None)
  ref_eps = ref_rate * ref_evals if ref_rate and ref_evals else None
  same = impl == "stock"
  compile_text = _not_finished(r, "train_compile") or _fmt(r.get("first_call_s"), ".1f")
  loss = r.get("repeat_losses") or [None, None]
  nfe = _harness.median(r["fwd_nfe"]) if r.get("fwd_nfe") and not flow_matching else None
  rate_ratio = "1.00x" if same else _harness.ratio(rate, ref_rate)
  if flow_matching and rate_ratio != "-":
    rate_ratio += " of ours ML"
  return (f"| {impl} | {xla} | {_fmt(rate, '.2f')} | {rate_ratio} | {_fmt(nfe, '.1f')} | "
          f"{_fmt(evals, '.1f')} | {_fmt(eps, ',.0f')} | "
          f"{'1.00x' if same else _harness.ratio(eps, ref_eps)} | {compile_text} | "
          f"{_fmt(r.get('first_step_loss'), '.3f')} -> {_fmt(loss[0], '.3f')} / "
          f"{_fmt(loss[-1], '.3f')} | {_fmt(r.get('peak_rss_mb'), '.0f')} | "
          f"{r['other_cores']:.2f} |")


def _eval_row(impl, xla, r, stock):
  lp = _harness.median(r["log_prob_rates"]) if "log_prob_rates" in r else None
  sp = _harness.median(r["sample_rates"]) if "sample_rates" in r else None
  s_lp = _harness.median(stock["log_prob_rates"]) if stock and "log_prob_rates" in stock else None
  s_sp = _harness.median(stock["sample_rates"]) if stock and "sample_rates" in stock else None
  lp_compile = _not_finished(r, "log_prob_compile") or _fmt(
      r.get("log_prob_first_call_s"), ".1f")
  sp_compile = _not_finished(r, "sample_compile") or _fmt(
      r.get("sample_first_call_s"), ".1f")
  same = impl == "stock"
  return (f"| {impl} | {xla} | {_fmt(lp, ',.0f')} | "
          f"{'1.00x' if same else _harness.ratio(lp, s_lp)} | "
          f"{_fmt(r.get('log_prob_evals'), '.1f')} | {lp_compile} | "
          f"{_fmt(sp, ',.0f')} | {'1.00x' if same else _harness.ratio(sp, s_sp)} | "
          f"{_fmt(r.get('sample_evals'), '.1f')} | {sp_compile} | "
          f"{_fmt(r.get('init_nll'), '.4f')} | "
          f"{ {True: 'yes', False: 'NO', None: '-'}[r.get('samples_finite')]} | "
          f"{r['other_cores']:.2f} |")


def _summary(out, part):
  """One progress line's figures for a finished worker."""
  def median(key, spec):
    return _fmt(_harness.median(out[key]), spec) if key in out else "-"

  if part == "both":
    return "interleaved rounds done" if "duel" in out else "no result"

  if part == "train":
    return (f"train {median('train_rates', '.2f')} steps/s, evals/step "
            f"{median('evals_per_step', '.1f')}, first step "
            f"{_fmt(out.get('first_call_s'), '.1f')}s")
  return (f"log_prob {median('log_prob_rates', ',.0f')}/s, sample "
          f"{median('sample_rates', ',.0f')}/s, first log_prob "
          f"{_fmt(out.get('log_prob_first_call_s'), '.1f')}s")


def _duel_table(results):
  """Interleaved rounds: medians and the median / range of the per-round ratios."""
  lines = ["Interleaved in one process (rounds alternate ours and stock; stock without "
           "XLA in both rows; ratio = ours/stock per round, median [min, max]):", "",
           "| ours XLA | part | ours /s | stock /s | ratio | ours evals/call | stock "
           "evals/call | evals/s ratio | other procs' cores |", "|" + "---|" * 9]
  for (_, xla, _), r in results.items():
    duel = r.get("duel")
    if not duel:
      lines.append(f"| {xla} | - | did not finish | | | | | | {r['other_cores']:.2f} |")
      continue
    for part, unit in (("train", "steps"), ("log_prob", "points")):
      ours, stock = duel[f"{part}:ours"], duel[f"{part}:stock"]
      ratios = [a / b for a, b in zip(ours["rates"], stock["rates"])]
      e_ours, e_stock = _harness.median(ours["evals"]), _harness.median(stock["evals"])
      eval_ratios = [a * e_ours / (b * e_stock) for a, b in zip(ours["rates"],
                                                                stock["rates"])]
      lines.append(
          f"| {xla} | {part} ({unit}) | {_harness.median(ours['rates']):,.1f} | "
          f"{_harness.median(stock['rates']):,.1f} | {_harness.median(ratios):.2f}x "
          f"[{min(ratios):.2f}, {max(ratios):.2f}] | {e_ours:.1f} | {e_stock:.1f} | "
          f"{_harness.median(eval_ratios):.2f}x | {r['other_cores']:.2f} |")
  return "\n".join(lines)


def _tables(results):
  if _INTERLEAVED.value:
    return _duel_table(results)
  lines = ["Training (batch 256; evals = vector-field evaluations, forward + adjoint; "
           "fm and fm_ot solve no ODE, their loss is the flow-matching regression):", "",
           "| case | XLA | train steps/s | vs stock | fwd NFE | evals/step | evals/s | "
           "vs stock | first step s | loss first -> first / last repeat | peak RSS MB | "
           "other procs' cores |", "|" + "---|" * 12]
  for (impl, xla, part), r in results.items():
    if part == "train":
      reference = "ours" if impl in ("fm", "fm_ot") else "stock"
      lines.append(_train_row(impl, xla, r, results.get((reference, xla, "train"))))
  lines += ["", "Evaluation (exact trace; `sample` solves base -> data):", "",
            "| case | XLA | log_prob pts/s | vs stock | evals/call | first call s | "
            "sample/s | vs stock | evals/call | first call s | NLL of batch 0 | "
            "samples finite | other procs' cores |", "|" + "---|" * 13]
  for (impl, xla, part), r in results.items():
    if part == "eval":
      lines.append(_eval_row(impl, xla, r, results.get(("stock", xla, "eval"))))
  return "\n".join(lines)


def main(argv):
  del argv
  if _WORKER.value == "pretrain":
    _run_pretrain(_WEIGHTS.value)
    return
  if _WORKER.value and _WORKER.value.startswith("duel:"):
    _run_duel(_WORKER.value.split(":")[1])
    return
  if _WORKER.value:
    _run_worker(_WORKER.value)
    return
  _harness.check_choices("cases", _CASES.value, _IMPLS)
  _harness.check_choices("xla", _XLA.value, ("on", "off"))
  passthrough = [a for a in sys.argv[1:]
                 if not a.startswith(("--cases", "--xla", "--json_out", "--quiet",
                                      "--interleaved",
                                      "--weights", "--compile_timeout", "--case_timeout",
                                      "--verbose"))]
  settings = _settings()
  print(f"FFJORD benchmark: two moons, MLP {_HIDDEN} softplus, dopri5 rtol {_RTOL.value} "
        f"atol {_ATOL.value}, max_num_steps {_MAX_NUM_STEPS}, batch {_BATCH.value}, Adam lr "
        f"{_LR.value}, float32; {settings['repeats']} repeats x {settings['steps']} steps "
        f"({settings['fm_steps']} for flow matching) after {settings['warmup']} warm-up "
        f"steps; compile timeout {_COMPILE_TIMEOUT.value} s; load average "
        f"{_harness.load_average()}.",
        flush=True)
  fingerprint = _harness.fingerprint()
  print(f"tfp_flows: {fingerprint}", flush=True)
  start = time.perf_counter()
  results, total_waited = {}, 0.0
  with tempfile.TemporaryDirectory() as tmp:
    weights = os.path.join(tmp, "weights.npz")
    pre = _spawn("pretrain", passthrough + [f"--weights={weights}"])
    print(f"  pretrained the shared field by {_PRETRAIN.value} flow-matching steps "
          f"(last loss {_fmt(pre.get('pretrain_loss'), '.3f')}; {pre['wall_s']:.0f}s)",
          flush=True)
    specs = []
    for xla in _XLA.value:
      for impl in _CASES.value:
        specs.append((impl, xla, "train"))
        if impl in ("ours", "stock"):
          specs.append((impl, xla, "eval"))
    if _INTERLEAVED.value:
      specs = [("duel", xla, "both") for xla in _XLA.value]
    for impl, xla, part in specs:
      waited = _harness.wait_for_quiet(_QUIET_WAIT.value, _QUIET_CORES.value)
      total_waited += waited
      load_before = _harness.load_average()
      spec = f"duel:{xla}" if impl == "duel" else f"{impl}:{xla}:{part}"
      out = _spawn(spec, passthrough + [f"--weights={weights}"])
      results[(impl, xla, part)] = out
      summary = _summary(out, part)
      if out.get("timeout"):
        summary += f"; {out['timeout'][0]} did not finish in {out['timeout'][1]} s"
      print(f"  {impl}:{xla}:{part:5s} {summary} ({out['wall_s']:.0f}s after waiting "
            f"{waited:.0f}s; other processes used {out['other_cores']:.2f} cores; load "
            f"before {load_before}, after {_harness.load_average()})", flush=True)
  print()
  print(_tables(results))
  print(f"\ntotal wall time {time.perf_counter() - start:.0f}s (of which waiting for a "
        f"quiet machine {total_waited:.0f}s); load average {_harness.load_average()}")
  _harness.warn_if_changed(fingerprint)
  if _JSON_OUT.value:
    with open(_JSON_OUT.value, "w", encoding="utf-8") as f:
      json.dump([{"case": k[0], "xla": k[1], "part": k[2], **v}
                 for k, v in results.items()], f, indent=1)


if __name__ == "__main__":
  app.run(main)
