"""Residual flow benchmark: the Neumann-series gradient against backprop through the series.

The DESIGN's residual-flow cases, trained with batch 256, Adam (lr 1e-3), float32:

* `rf2`:  `tfp_flows.models.ResidualFlow([2], num_blocks=4, hidden_units=(128, 128))` on
  two moons (2,048 points, standardised).
* `rf64`: `tfp_flows.models.ResidualFlow([64], num_blocks=8, hidden_units=(128, 128))`
  on scikit-learn's 8x8 digits, flattened, dequantised with U[0, 1) noise once and
  standardised (the same data as `benchmarks/nsf_benchmark.py`).

Both use the preset's defaults otherwise: Lipschitz coefficient 0.97, ActNorm before
every block, Russian-roulette log-det with a geometric count (p = 0.5, so one random term
on average on top of the `n_exact_terms` always computed). Cases, per model and XLA
setting (`jit_compile` of the train step):

* `neumann:n`:  `log_det="russian_roulette", gradient="neumann", num_exact_terms=n`.
* `backprop:n`: `log_det="russian_roulette", gradient="backprop", num_exact_terms=n`.
* `exact`: `log_det="exact"` (dense Jacobian by `batch_jacobian`, log-det by QR): the
  naive baseline, timed in the same run. It exists for 2-D and 64-D in graph mode and for
  2-D under XLA; its 64-D XLA compile did not finish in 9 minutes (3 GB RSS) when tried,
  so that case is left out unless `--exact_xla64` asks for it (with `--timeout_s`).

There is no residual flow in stock TFP. DESIGN's reference figures are normflows' (63
steps/s 2-D, 27 steps/s 64-D, "on this kind of machine", with n_exact_terms = 2 and the
Neumann gradient, its defaults); they are QUOTED, not measured here, and the table's
"vs normflows (quoted)" column divides by them. The target is >= 2x those figures.

Every case runs in its own subprocess. The train step is a `tf.function` (GradientTape
over `-mean(model(x, training=True))`, Keras 3 Adam `apply`), with `jit_compile` per the
XLA setting. Reported per case: training steps/s (median over repeats, each repeat sized
to about `--repeat_seconds`, after the first call and `--warmup_steps` steps), the first
call's time (trace + compile + one step), the peak of TF's CPU allocator during the timed
steps (workers run with `TF_CPU_ALLOCATOR_USE_BFC=true`, which makes
`tf.config.experimental.get_memory_info("CPU:0")` work on CPU; XLA's buffers come from
the same allocator; `--bfc=false` turns it off and the column reads "-"), the process's
peak RSS (coarse: it includes TF, the traced graphs and the XLA executables), the loss
at initialisation and the mean loss of the last timed repeat. The `neumann` case with the
smallest n also times evaluation-mode `log_prob` (exact log-det for these sizes; the
same for every case) and `sample(256)` (fixed-point inversion), and checks the samples
are finite. With `--fit`, one extra case trains by `model.fit` over several short epochs
and reports every epoch's time, to show that `fit` does not retrace after the first.

The machine is shared: every case reports the CPU cores that *other* processes used
while it ran (machine-wide busy time from /proc/stat minus the worker's own CPU time),
and `--quiet_wait` delays each case until they are idle (as `nsf_benchmark.py` does).

Usage:
  python benchmarks/residual_benchmark.py           # full run, about 12-15 minutes
  python benchmarks/residual_benchmark.py --quiet_wait=300   # wait for an idle machine
  python benchmarks/residual_benchmark.py --quick   # n_exact_terms 2 and 16, fewer repeats
  python benchmarks/residual_benchmark.py --models=rf64 --xla=on --n_exact_terms=2,16
"""

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

import _harness

_QUICK = flags.DEFINE_boolean("quick", False,
                              "n_exact_terms 2 and 16 only, fewer and shorter repeats.")
_MODELS = flags.DEFINE_list("models", ["rf2", "rf64"], "Models among rf2, rf64.")
_GRADIENTS = flags.DEFINE_list("gradients", ["neumann", "backprop"],
                               "Gradient estimators to sweep over n_exact_terms.")
_N_EXACT = flags.DEFINE_list("n_exact_terms", None,
                             "n_exact_terms values (default 2,4,8,16; quick 2,16).")
_EXACT = flags.DEFINE_boolean("exact", True, "Also run the logdet='exact' baseline.")
_EXACT_XLA64 = flags.DEFINE_boolean(
    "exact_xla64", False, "Also try the 64-D exact baseline under XLA (its compile took "
    "more than 9 minutes when tried; bounded by --timeout_s).")
_XLA = flags.DEFINE_list("xla", ["off", "on"], "XLA settings to run: off, on.")
_FIT = flags.DEFINE_list("fit", ["rf64:on"],
                         "Extra model.fit cases (Neumann, smallest n) as model:xla; empty "
                         "for none.")
_REPEATS = flags.DEFINE_integer("repeats", None, "Timed repeats (default 5, quick 3).")
_REPEAT_SECONDS = flags.DEFINE_float(
    "repeat_seconds", None, "Target length of one timed repeat (default 1.0, quick 0.6); "
    "steps per repeat = this / the warm-up step time, clipped to [1, 40]; cases slower "
    "than 1 s per step run 3 repeats.")
_WARMUP = flags.DEFINE_integer("warmup_steps", 3, "Untimed steps after the first call.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Batch size.")
_LR = flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
_BFC = flags.DEFINE_boolean("bfc", True,
                            "Run workers with TF_CPU_ALLOCATOR_USE_BFC=true to report "
                            "TF's allocator peak.")
_TIMEOUT = flags.DEFINE_integer("timeout_s", 600, "Per-worker time limit (seconds).")
_QUIET_WAIT = flags.DEFINE_integer(
    "quiet_wait", 0, "Before each case, wait up to this many seconds until other "
    "processes use less than --quiet_cores CPU cores (the machine is shared).")
_QUIET_CORES = flags.DEFINE_float("quiet_cores", 0.3,
                                  "CPU cores other processes may use for --quiet_wait.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the results as JSON here.")
_WORKER = flags.DEFINE_string("worker", None, "Internal: run one case, e.g. rf2:neumann:2:on.")

_MARKER = "RESIDUAL_BENCHMARK_RESULT "
_PHASE_MARKER = "RESIDUAL_BENCHMARK_TRAINING_DONE"
_COMPILE_LOG = "Compilation of XLA executable"
_HIDDEN = (128, 128)
_MODEL_SPECS = {
    # name: (event dims, blocks, description, normflows steps/s quoted in DESIGN.md)
    "rf2": (2, 4, "residual flow 2-D, 4 blocks, MLP 128x2, two moons", 63.0),
    "rf64": (64, 8, "residual flow 64-D, 8 blocks, MLP 128x2, digits", 27.0),
}


# ----------------------------------------------------------------------------- worker


def _settings():
  quick = _QUICK.value
  return {
      "repeats": _REPEATS.value or (3 if quick else 5),
      "repeat_seconds": _REPEAT_SECONDS.value or (0.6 if quick else 1.0),
      "warmup": _WARMUP.value,
      "eval_repeats": 3 if quick else 5,
      "eval_seconds": 0.3 if quick else 0.6,
      "fit_epochs": 4 if quick else 6,
      "fit_steps_per_epoch": 10 if quick else 20,
  }


def _n_exact_values():
  values = _N_EXACT.value or (["2", "16"] if _QUICK.value else ["2", "4", "8", "16"])
  return [int(v) for v in values]


def _allocator_mb(key):
  """TF's CPU allocator statistic `key` ("peak"/"current") in MB, or None."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  try:
    return tf.config.experimental.get_memory_info("CPU:0")[key] / 2**20
  except ValueError:  # "Allocator stats not available" without the BFC allocator
    return None


def _reset_allocator_peak():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  try:
    tf.config.experimental.reset_memory_stats("CPU:0")
  except ValueError:
    pass


def _run_worker(spec):
  """Runs one case in this process; prints a JSON line prefixed by _MARKER."""
  model_name, estimator, n_name, xla_name = spec.split(":")[:4]
  use_fit = spec.endswith(":fit")
  xla = xla_name == "on"
  dims, num_blocks, _, _ = _MODEL_SPECS[model_name]
  n_exact = int(n_name) if n_name != "-" else 2
  cfg = dict(_settings(), batch=_BATCH.value, lr=_LR.value)
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import keras  # pylint: disable=import-outside-toplevel
  import tfp_flows as tff  # pylint: disable=import-outside-toplevel

  keras.utils.set_random_seed(0)
  tf.random.set_seed(0)
  x_all, batches_np = _harness.vector_data(dims, cfg["batch"])
  batches = [tf.constant(b) for b in batches_np]
  result = {"model": model_name, "estimator": estimator,
            "n_exact": None if estimator == "exact" else n_exact, "xla": xla,
            "fit": use_fit}

  start = time.perf_counter()
  model = tff.models.ResidualFlow(
      [dims], num_blocks=num_blocks, hidden_units=_HIDDEN,
      log_det="exact" if estimator == "exact" else "russian_roulette",
      num_exact_terms=n_exact, gradient="backprop" if estimator == "backprop" else "neumann")
  result["build_s"] = time.perf_counter() - start
  variables = model.trainable_variables
  result["num_params"] = int(sum(np.prod(v.shape) for v in variables))
  optimizer = keras.optimizers.Adam(cfg["lr"])

  if use_fit:
    # ---- model.fit: several short epochs, timestamps per batch and per epoch.
    model.compile(optimizer=optimizer, jit_compile=xla)
    # Count Python calls of train_step: inside fit's tf.function they happen only while
    # tracing, so the count is the number of traces (1 = no retracing).
    traces = [0]
    train_step = model.train_step

    def counted_train_step(data):
      traces[0] += 1
      return train_step(data)

    model.train_step = counted_train_step
    batch_stamps, epoch_stamps = [], []

    class Timer(keras.callbacks.Callback):

      def on_train_batch_end(self, batch, logs=None):
        batch_stamps.append(time.perf_counter())
        if len(batch_stamps) == 1:
          result["init_loss"] = float(logs["nll"])

      def on_epoch_end(self, epoch, logs=None):
        epoch_stamps.append(time.perf_counter())

    ds = (tf.data.Dataset.from_tensor_slices(x_all).repeat().shuffle(2048, seed=0)
          .batch(cfg["batch"], drop_remainder=True).prefetch(4))
    steps = cfg["fit_steps_per_epoch"]
    start = time.perf_counter()
    history = model.fit(ds, epochs=cfg["fit_epochs"], steps_per_epoch=steps, verbose=0,
                        callbacks=[Timer()])
    result["first_call_s"] = batch_stamps[0] - start
    bounds = [start] + epoch_stamps
    result["epoch_s"] = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    # Steps/s per epoch from batch timestamps (epoch 1 without its first step; later
    # epochs include the epoch boundary before them).
    rates = [(steps - 1) / (batch_stamps[steps - 1] - batch_stamps[0])]
    for e in range(1, cfg["fit_epochs"]):
      rates.append(steps / (batch_stamps[(e + 1) * steps - 1] - batch_stamps[e * steps - 1]))
    result["train_rates"] = rates[1:]
    result["epoch1_rate"] = rates[0]
    result["traces"] = traces[0]
    result["last_loss"] = float(history.history["nll"][-1])
    result["alloc_peak_mb"] = None
  else:
    train_step = _harness.keras_train_step(model, optimizer, variables, xla)

    start = time.perf_counter()
    loss = train_step(batches[0])
    result["init_loss"] = float(loss)  # the training loss of the first step
    result["first_call_s"] = time.perf_counter() - start
    steps_done = 1
    begin = time.perf_counter()
    for _ in range(cfg["warmup"]):
      loss = train_step(batches[steps_done % len(batches)])
      steps_done += 1
    _harness.sync(loss)
    per_step = (time.perf_counter() - begin) / max(cfg["warmup"], 1)
    steps = int(min(40, max(1, round(cfg["repeat_seconds"] / max(per_step, 1e-6)))))
    repeats = cfg["repeats"] if per_step < 1.0 else 3  # slow baselines: fewer repeats
    result["steps_per_repeat"] = steps
    _reset_allocator_peak()
    result["alloc_before_mb"] = _allocator_mb("current")
    rates, losses = [], []
    for _ in range(repeats):
      repeat_losses = []
      begin = time.perf_counter()
      for _ in range(steps):
        loss = train_step(batches[steps_done % len(batches)])
        repeat_losses.append(loss)
        steps_done += 1
      _harness.sync(loss)
      rates.append(steps / (time.perf_counter() - begin))
      losses.append(float(np.mean([l.numpy() for l in repeat_losses])))
    result["alloc_peak_mb"] = _allocator_mb("peak")
    result["train_rates"] = rates
    result["last_loss"] = losses[-1]
    result["train_steps_total"] = steps_done
    result["traces"] = _num_traces(train_step)

  # The parent counts XLA compilations logged before this line (TF_CPP_VMODULE).
  sys.stderr.write(_PHASE_MARKER + "\n")
  sys.stderr.flush()

  # ---- evaluation-mode log_prob and sampling (the same for every training estimator).
  if estimator == "neumann" and n_exact == min(_n_exact_values()) and not use_fit:
    sample_fn, log_prob_fn = _harness.eval_functions(model, cfg["batch"], xla)

    seeds = [(tf.constant([7, i], tf.int32),) for i in range(4)]
    start = time.perf_counter()
    samples = sample_fn(*seeds[0]).numpy()
    result["sample_first_call_s"] = time.perf_counter() - start
    result["samples_finite"] = bool(np.isfinite(samples).all())
    result["sample_rates"], _ = _harness.timed_rates(sample_fn, seeds, cfg["eval_repeats"],
                                             cfg["eval_seconds"], cfg["batch"])
    start = time.perf_counter()
    _harness.sync(log_prob_fn(batches[0]))
    result["log_prob_first_call_s"] = time.perf_counter() - start
    result["log_prob_rates"], _ = _harness.timed_rates(
        log_prob_fn, [(b,) for b in batches], cfg["eval_repeats"], cfg["eval_seconds"],
        cfg["batch"])
  result["peak_rss_mb"] = _harness.peak_rss_mb()
  _harness.emit(_MARKER, result)


def _num_traces(fn):
  """Concrete functions traced by a `tf.function` (1 = no retracing), or None."""
  try:
    return int(fn.experimental_get_tracing_count())
  except AttributeError:
    return None


# ----------------------------------------------------------------------------- parent


def _spawn(spec, argv_flags):
  # TF's XLA device compiler logs every compilation at this verbosity; the count before
  # the worker's phase marker is the number of XLA compiles of the train step.
  env = _harness.worker_env(TF_CPP_MIN_LOG_LEVEL="0", TF_CPP_VMODULE="device_compiler=1")
  if _BFC.value:
    env["TF_CPU_ALLOCATOR_USE_BFC"] = "true"
  meter = _harness.CpuMeter()
  try:
    proc = subprocess.run(_harness.worker_command(__file__, spec, argv_flags),
                          capture_output=True, text=True, env=env, check=False,
                          timeout=_TIMEOUT.value)
  except subprocess.TimeoutExpired:
    return {"spec": spec, "timeout": True, "wall_s": meter.elapsed()}
  usage = meter.stop()
  out = _harness.parse_result(proc.stdout, _MARKER)
  if out is None:
    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
    return {"spec": spec, "failed": proc.returncode, "wall_s": usage["wall_s"]}
  compiles = 0
  for err_line in proc.stderr.splitlines():
    if _PHASE_MARKER in err_line:
      break
    compiles += _COMPILE_LOG in err_line
  return {**out, **usage, "spec": spec, "xla_compiles": compiles}


def _fmt(value, spec="{:.1f}"):
  return "-" if value is None else spec.format(value)


def _training_table(results):
  header = ("| model | estimator | n_exact | XLA | train steps/s | vs exact | vs normflows "
            "(quoted) | first step s | XLA compiles | allocator peak MB | peak RSS MB | "
            "loss first -> last | other procs' cores |")
  lines = _harness.table_header(header)
  exact = {(r["model"], r["xla"]): r for r in results
           if r.get("estimator") == "exact" and "train_rates" in r}
  for r in results:
    if r.get("fit"):
      continue
    model, estimator, n_name, xla_name = r["spec"].split(":")[:4]
    if "train_rates" not in r:
      why = "timed out" if r.get("timeout") else f"failed ({r.get('failed')})"
      lines.append(f"| {model} | {estimator} | {n_name} | {xla_name} | {why} after "
                   f"{r['wall_s']:.0f} s | | | | | | | | |")
      continue
    rate = _harness.median(r["train_rates"])
    base = exact.get((model, r["xla"]))
    vs_exact = "1.00x" if estimator == "exact" else (
        f"{rate / _harness.median(base['train_rates']):.2f}x" if base else "-")
    quoted = _MODEL_SPECS[model][3]
    lines.append(
        f"| {model} | {estimator} | {n_name} | {xla_name} | {rate:.1f} | {vs_exact} | "
        f"{rate / quoted:.2f}x | {r['first_call_s']:.1f} | {r['xla_compiles']} | "
        f"{_fmt(r['alloc_peak_mb'])} | "
        f"{r['peak_rss_mb']:.0f} | {r['init_loss']:.2f} -> {r['last_loss']:.2f} | "
        f"{r['other_cores']:.2f} |")
  return "\n".join(lines)


def _memory_table(results, n_values):
  """Allocator peak (and steps/s) against n_exact_terms, one row per model/XLA/gradient."""
  rows = {}
  for r in results:
    if r.get("fit") or r.get("estimator") in (None, "exact") or "train_rates" not in r:
      continue
    rows.setdefault((r["model"], r["xla"], r["estimator"]), {})[r["n_exact"]] = r
  header = ("| model | XLA | gradient | " + " | ".join(
      f"n={n}: MB / steps/s" for n in n_values) + " | MB per extra term |")
  lines = _harness.table_header(header)
  for (model, xla, estimator), by_n in rows.items():
    cells = []
    for n in n_values:
      r = by_n.get(n)
      cells.append("-" if r is None else
                   f"{_fmt(r['alloc_peak_mb'])} / {_harness.median(r['train_rates']):.1f}")
    ns = [n for n in n_values if n in by_n and by_n[n]["alloc_peak_mb"] is not None]
    slope = "-"
    if len(ns) >= 2:
      growth = by_n[ns[-1]]["alloc_peak_mb"] - by_n[ns[0]]["alloc_peak_mb"]
      slope = f"{growth / (ns[-1] - ns[0]):.2f}"
    lines.append(f"| {model} | {'on' if xla else 'off'} | {estimator} | " +
                 " | ".join(cells) + f" | {slope} |")
  return "\n".join(lines)


def _ratio_table(results, n_values):
  """Neumann / backprop steps/s at equal model, XLA and n; XLA on / off per estimator."""
  by_key = {(r["model"], r["xla"], r.get("estimator"), r.get("n_exact")): r
            for r in results if "train_rates" in r and not r.get("fit")}
  lines = _harness.table_header(
      "| model | n_exact | Neumann/backprop XLA off | Neumann/backprop XLA on | "
      "XLA on/off Neumann | XLA on/off backprop |")
  rate = lambda key: _harness.median(by_key[key]["train_rates"]) if key in by_key else None
  ratio = _harness.ratio
  for model in _MODEL_SPECS:
    for n in n_values:
      cells = [ratio(rate((model, x, "neumann", n)), rate((model, x, "backprop", n)))
               for x in (False, True)]
      cells += [ratio(rate((model, True, e, n)), rate((model, False, e, n)))
                for e in ("neumann", "backprop")]
      if any(c != "-" for c in cells):
        lines.append(f"| {model} | {n} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _eval_table(results):
  lines = _harness.table_header(
      "| model | XLA | log_prob pts/s | first log_prob s | sample/s | first sample s | "
      "samples finite |")
  for r in results:
    if "log_prob_rates" not in r:
      continue
    lines.append(
        f"| {r['model']} | {'on' if r['xla'] else 'off'} | "
        f"{_harness.median(r['log_prob_rates']):,.0f} | {r['log_prob_first_call_s']:.1f} | "
        f"{_harness.median(r['sample_rates']):,.0f} | {r['sample_first_call_s']:.1f} | "
        f"{'yes' if r['samples_finite'] else 'NO'} |")
  return "\n".join(lines)


def _fit_lines(results):
  lines = []
  for r in results:
    if not r.get("fit") or "train_rates" not in r:
      continue
    lines.append(
        f"  model.fit {r['spec']}: epoch times "
        + ", ".join(f"{s:.2f}" for s in r["epoch_s"])
        + f" s; steps/s epoch 1 (after its first step) {r['epoch1_rate']:.1f}, later "
        f"epochs {', '.join(f'{v:.1f}' for v in r['train_rates'])}; first step "
        f"{r['first_call_s']:.1f} s; train_function traces {r['traces']}; last-epoch nll "
        f"{r['last_loss']:.2f}; XLA compiles {r['xla_compiles']}")
  return "\n".join(lines)


def _spread(results):
  lines = ["train steps/s per repeat (min / median / max), steps per repeat, traces:"]
  for r in results:
    if "train_rates" not in r or r.get("fit"):
      continue
    t = r["train_rates"]
    lines.append(f"  {r['spec']:22s} {_harness.spread(t)} "
                 f"(n={len(t)} x {r['steps_per_repeat']} steps; traces {r['traces']}; "
                 f"build {r['build_s']:.1f} s; worker wall {r['wall_s']:.0f} s; load "
                 f"before {r['load_before']})")
  return "\n".join(lines)


def main(argv):
  del argv
  if _WORKER.value:
    _run_worker(_WORKER.value)
    return
  _harness.check_choices("models", _MODELS.value, tuple(_MODEL_SPECS))
  _harness.check_choices("gradients", _GRADIENTS.value, ("neumann", "backprop"))
  _harness.check_choices("xla", _XLA.value, ("on", "off"))
  n_values = _n_exact_values()
  passthrough = [a for a in sys.argv[1:]
                 if not a.startswith(("--models", "--gradients", "--xla", "--exact",
                                      "--json_out", "--fit", "--timeout_s", "--bfc",
                                      "--quiet"))]
  settings = _settings()
  print(f"Residual flow benchmark: MLP {_HIDDEN}, batch {_BATCH.value}, Adam lr "
        f"{_LR.value}, float32; n_exact_terms {n_values}; {settings['repeats']} repeats of "
        f"~{settings['repeat_seconds']} s after the first call and {settings['warmup']} "
        f"warm-up steps; BFC allocator {'on' if _BFC.value else 'off'}; "
        f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}; "
        f"load average {_harness.load_average()}.", flush=True)
  fingerprint = _harness.fingerprint()
  print(f"tfp_flows: {fingerprint}", flush=True)
  specs = []
  for m in _MODELS.value:
    for x in _XLA.value:
      if _EXACT.value and (m != "rf64" or x == "off" or _EXACT_XLA64.value):
        specs.append(f"{m}:exact:-:{x}")
      for n in n_values:
        specs += [f"{m}:{g}:{n}:{x}" for g in _GRADIENTS.value]
      if f"{m}:{x}" in _FIT.value:
        specs.append(f"{m}:neumann:{min(n_values)}:{x}:fit")
  results = []
  start = time.perf_counter()
  total_waited = 0.0
  for spec in specs:
    waited = _harness.wait_for_quiet(_QUIET_WAIT.value, _QUIET_CORES.value)
    total_waited += waited
    load_before = _harness.load_average()
    out = _spawn(spec, passthrough)
    out["load_before"] = load_before
    out["waited_s"] = waited
    results.append(out)
    if "train_rates" in out:
      print(f"  {spec:24s} train {_harness.median(out['train_rates']):6.1f} steps/s, first "
            f"{out['first_call_s']:5.1f} s, alloc peak {_fmt(out['alloc_peak_mb'])} MB, "
            f"RSS {out['peak_rss_mb']:.0f} MB ({out['wall_s']:.0f} s after waiting "
            f"{waited:.0f} s; other processes used {out['other_cores']:.2f} cores; load "
            f"before {load_before}, after {_harness.load_average()})", flush=True)
    else:
      print(f"  {spec:24s} {'TIMED OUT' if out.get('timeout') else 'FAILED'} after "
            f"{out['wall_s']:.0f} s", flush=True)
  print()
  for m in _MODELS.value:
    print(f"{m}: {_MODEL_SPECS[m][2]}; normflows {_MODEL_SPECS[m][3]:.0f} steps/s is "
          "QUOTED from DESIGN.md, not measured here")
  print()
  print(_training_table(results))
  print()
  print("Allocator peak during the timed steps vs n_exact_terms:")
  print(_memory_table(results, n_values))
  print()
  print(_ratio_table(results, n_values))
  print()
  print("Evaluation mode (exact log-det), from the Neumann n=%d cases:" % min(n_values))
  print(_eval_table(results))
  print()
  fit = _fit_lines(results)
  if fit:
    print(fit)
    print()
  print(_spread(results))
  print(f"\ntotal wall time {time.perf_counter() - start:.0f}s (of which waiting for a "
        f"quiet machine {total_waited:.0f}s); load average {_harness.load_average()}")
  _harness.warn_if_changed(fingerprint)
  if _JSON_OUT.value:
    with open(_JSON_OUT.value, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  app.run(main)
