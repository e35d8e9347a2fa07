"""Neural spline flow benchmark: tfp_flows' NeuralSplineFlow against the same model in stock TFP.

The DESIGN's NSF cases, on 64-D real data (scikit-learn's 8x8 digits, flattened,
dequantised with U[0, 1) noise once and standardised) and on 2-D two moons:

* `nsf64`: coupling NSF, 64-D, 5 layers, 8 bins, bound 3, MLP conditioner 128x2.
* `maf64`: autoregressive NSF (MAF direction), 64-D, 5 layers, MADE 128x2.
* `nsf2`:  coupling NSF, 2-D, 4 layers, 8 bins, bound 3, MLP 128x2 (DESIGN's 2-D case).

Each model exists as

* `ours`: `tfp_flows.models.NeuralSplineFlow(D, num_layers, num_bins=8, bound=3.0,
  hidden_units=(128, 128), autoregressive=..., actnorm=False, linear="permute")`
  (Keras 3), trained by a custom `tf.function` step (GradientTape over
  `-mean(model(x, training=True))`, Keras 3 Adam `apply`).
* `ours_fit` (nsf64 only by default): the same model trained by `model.fit` (one long
  epoch; steps/s from per-batch timestamps, so compilation is excluded).
* `stock`: the same model from stock TFP parts:
  `tfd.TransformedDistribution(tfd.Sample(tfd.Normal(0, 1), [D]), tfb.Chain([...]))`
  with, data side first, per layer `tfb.Permute(reversed)` then either
  `tfb.RealNVP(num_masked=+-D/2, bijector_fn=...)` (the sign alternates which half is
  kept, exactly like our `reverse=i % 2 == 1`) whose `bijector_fn` returns
  `tfb.RationalQuadraticSpline(widths, heights, slopes, range_min=-3)` from a tf_keras
  `Sequential` Dense(128, relu) x2 + Dense((D/2) (3K - 1)) net, or
  `tfb.MaskedAutoregressiveFlow(bijector_fn=...)` around
  `tfb.AutoregressiveNetwork(params=3K - 1, hidden_units=[128, 128], event_shape=[D],
  input_order="left-to-right" / "right-to-left")` (alternating, like our
  natural / reversed MADE orders). The spline parameters get our constraints:
  widths = 2B (1e-3 + (1 - 1e-3 K) softmax(u)), heights likewise,
  interior slopes = 1e-3 + softplus(u + c) with softplus(c) = 1 - 1e-3; and the nets'
  last Dense layer starts at zero, as ours does, so both flows start as the exact
  identity and their initial losses agree. tf_keras, not Keras 3: TFP's
  `AutoregressiveNetwork` is a tf_keras layer whose masks are enforced by a kernel
  *constraint* (the kernel is used unmasked in the forward pass), which tf_keras'
  optimizer applies after every update; the worker checks that the masked entries are
  still zero after training. Trained with tf_keras Adam (lr 1e-3) on the nets'
  variables by the same kind of custom `tf.function` step.

Each case runs in its own subprocess (separate peak RSS). Reported per case: training
steps/s (median over repeats of timed steps after warm-up), the first-call (trace +
compile) time, `log_prob` points/s (batches of 256, `tf.function` with the same XLA
setting), sampling samples/s (`sample(256)`), peak RSS, the number of parameters,
ratios ours/stock with the same XLA setting, the loss at initialisation and the mean
loss of the first and last timed repeats (a sanity check that both learn), whether
the samples drawn after training are finite, and the CPU cores that *other* processes
used while the case ran (machine-wide busy time from /proc/stat minus the worker's own
CPU time). The machine is shared: the load average counts our own TF threads, so the
last column is the one to check; `--quiet_wait` delays each case until others are idle.
The header prints an md5 of the tfp_flows sources the workers import (others may edit
the library during a run; a warning is printed if it changed).

Usage:
  python benchmarks/nsf_benchmark.py            # full run, about 10 minutes on 2 cores
  python benchmarks/nsf_benchmark.py --quick    # fewer repeats and steps, about 6 minutes
  python benchmarks/nsf_benchmark.py --quiet_wait=300   # wait for an idle machine per case
  python benchmarks/nsf_benchmark.py --models=nsf2 --xla=on --rounds=2
  python benchmarks/nsf_benchmark.py --baseline_src=/tmp/old  # + an older tfp_flows
"""

import json
import math
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

import _harness

_QUICK = flags.DEFINE_boolean("quick", False,
                              "Fewer repeats and steps (about 1/3 of the full run).")
_MODELS = flags.DEFINE_list("models", ["nsf64", "maf64", "nsf2"],
                            "Models among nsf64 (coupling 64-D), maf64 (autoregressive "
                            "64-D), nsf2 (coupling 2-D).")
_CASES = flags.DEFINE_list("cases", ["ours", "stock"], "Cases among ours, stock.")
_BASELINE = flags.DEFINE_string(
    "baseline_src", None, "Also time, as case `base`, the tfp_flows package found in "
    "this directory (e.g. `git archive <commit> tfp_flows | tar -x -C DIR`), to compare "
    "two versions of the library in one run.")
_FIT = flags.DEFINE_list("fit", ["nsf64:on"],
                         "Extra ours_fit cases as model:xla (empty for none).")
_XLA = flags.DEFINE_list("xla", ["off", "on"], "XLA settings to run: off, on.")
_ROUNDS = flags.DEFINE_integer("rounds", 1,
                               "Run every case this many times (interleaved) and pool "
                               "the repeats; helps when the machine is noisy.",
                               lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", None, "Timed repeats (default 7, quick 4).")
_STEPS = flags.DEFINE_integer("steps_per_repeat", None,
                              "Training steps per timed repeat (default 20, quick 10).")
_WARMUP = flags.DEFINE_integer("warmup_steps", 5, "Untimed steps after the first call.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Batch size.")
_LR = flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
_ONEDNN = flags.DEFINE_enum(
    "onednn", "default", ["default", "on", "off"],
    "TF_ENABLE_ONEDNN_OPTS for the workers (default: inherit; TF leaves oneDNN off on "
    "CPUs without AVX-512 VNNI/BF16/AMX, e.g. this AMD EPYC).")
_QUIET_WAIT = flags.DEFINE_integer(
    "quiet_wait", 0, "Before each case, wait up to this many seconds until other "
    "processes use less than --quiet_cores CPU cores (the machine is shared).")
_QUIET_CORES = flags.DEFINE_float("quiet_cores", 0.3,
                                  "CPU cores other processes may use for --quiet_wait.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the results as JSON here.")
_WORKER = flags.DEFINE_string("worker", None, "Internal: run one case, e.g. nsf64:ours:on.")

_MARKER = "NSF_BENCHMARK_RESULT "
_NUM_BINS = 8
_BOUND = 3.0
_HIDDEN = (128, 128)
_MIN = 1e-3  # min bin width / height (fraction of 2B) and min derivative, as ours
_MODEL_SPECS = {
    # name: (event dims, layers, autoregressive, description)
    "nsf64": (64, 5, False, "coupling NSF 64-D, 5 layers"),
    "maf64": (64, 5, True, "autoregressive NSF 64-D, 5 layers"),
    "nsf2": (2, 4, False, "coupling NSF 2-D, 4 layers"),
}


# ----------------------------------------------------------------------------- worker


def _settings():
  quick = _QUICK.value
  return {
      "repeats": _REPEATS.value or (4 if quick else 7),
      "steps": _STEPS.value or (10 if quick else 20),
      "warmup": _WARMUP.value,
      "eval_repeats": 4 if quick else 7,
      "eval_seconds": 0.25 if quick else 0.5,  # target duration of one eval repeat
  }


def _rqs_from_params(h, num_bins, bound):
  """Stock `tfb.RationalQuadraticSpline` from raw params [..., 3K - 1], our constraints."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import tensorflow_probability as tfp  # pylint: disable=import-outside-toplevel
  k = num_bins
  scale = 2.0 * bound * (1.0 - k * _MIN)
  widths = 2.0 * bound * _MIN + scale * tf.math.softmax(h[..., :k], axis=-1)
  heights = 2.0 * bound * _MIN + scale * tf.math.softmax(h[..., k:2 * k], axis=-1)
  shift = math.log(math.expm1(1.0 - _MIN))  # softplus(0 + shift) + _MIN == 1
  slopes = _MIN + tf.math.softplus(h[..., 2 * k:] + shift)
  return tfp.bijectors.RationalQuadraticSpline(widths, heights, slopes, range_min=-bound)


def _build_ours(dims, num_layers, autoregressive):
  import tfp_flows as tff  # pylint: disable=import-outside-toplevel
  return tff.models.NeuralSplineFlow(
      dims, num_layers=num_layers, num_bins=_NUM_BINS, bound=_BOUND,
      hidden_units=_HIDDEN, autoregressive=autoregressive, actnorm=False,
      linear="permute")


def _build_stock(dims, num_layers, autoregressive):
  """Returns (distribution, nets): the stock-TFP model and its tf_keras networks."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import tensorflow_probability as tfp  # pylint: disable=import-outside-toplevel
  import tf_keras  # pylint: disable=import-outside-toplevel
  tfb, tfd = tfp.bijectors, tfp.distributions
  num_params = 3 * _NUM_BINS - 1
  reverse = list(range(dims))[::-1]
  bijectors, nets = [], []
  for i in range(num_layers):
    bijectors.append(tfb.Permute(reverse, name=f"permute_{i}"))
    if autoregressive:
      made = tfb.AutoregressiveNetwork(
          params=num_params, event_shape=[dims], hidden_units=list(_HIDDEN),
          activation="relu",
          input_order="left-to-right" if i % 2 == 0 else "right-to-left",
          name=f"made_{i}")
      made.build((None, dims))
      last = [l for l in made._network.layers  # pylint: disable=protected-access
              if isinstance(l, tf_keras.layers.Dense)][-1]
      last.kernel.assign(tf.zeros_like(last.kernel))  # start at the identity, as ours

      def made_fn(y, made=made, **kwargs):
        del kwargs
        return _rqs_from_params(made(y), _NUM_BINS, _BOUND)

      bijectors.append(tfb.MaskedAutoregressiveFlow(bijector_fn=made_fn, name=f"maf_{i}"))
      nets.append(made)
    else:
      kept = dims // 2
      moved = dims - kept
      net = tf_keras.Sequential(
          [tf_keras.layers.Dense(u, activation="relu") for u in _HIDDEN]
          + [tf_keras.layers.Dense(moved * num_params, kernel_initializer="zeros")],
          name=f"mlp_{i}")
      net.build((None, kept))

      def coupling_fn(x0, output_units, net=net, **kwargs):
        del kwargs
        h = net(x0)
        h = tf.reshape(h, tf.concat([tf.shape(h)[:-1], [output_units, num_params]], 0))
        return _rqs_from_params(h, _NUM_BINS, _BOUND)

      # num_masked=+k keeps the first k entries (ours, reverse=False); -k keeps the
      # last k (ours, reverse=True).
      bijectors.append(tfb.RealNVP(num_masked=kept if i % 2 == 0 else -kept,
                                   bijector_fn=coupling_fn, name=f"realnvp_{i}"))
      nets.append(net)
  base = tfd.Sample(tfd.Normal(np.float32(0), np.float32(1)), [dims])
  return tfd.TransformedDistribution(base, tfb.Chain(bijectors)), nets


def _made_mask_violation(nets):
  """Max |kernel entry| where stock's MADE mask is 0 (must stay 0 for a valid MAF)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  worst = 0.0
  for made in nets:
    for kernel, mask in zip(
        [l.kernel for l in made._network.layers  # pylint: disable=protected-access
         if hasattr(l, "kernel")], made._masks):  # pylint: disable=protected-access
      worst = max(worst, float(np.max(np.abs(kernel.numpy() * (1.0 - mask)))))
  return worst


def _run_worker(spec):
  """Runs one case in this process; prints a JSON line prefixed by _MARKER."""
  model_name, impl, xla_name = spec.split(":")
  xla = xla_name == "on"
  dims, num_layers, autoregressive, _ = _MODEL_SPECS[model_name]
  cfg = dict(_settings(), batch=_BATCH.value, lr=_LR.value)
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import keras  # pylint: disable=import-outside-toplevel

  keras.utils.set_random_seed(0)
  tf.random.set_seed(0)
  x_all, batches_np = _harness.vector_data(dims, cfg["batch"])
  batches = [tf.constant(b) for b in batches_np]
  total_train = cfg["warmup"] + 1 + cfg["repeats"] * cfg["steps"]
  result = {"model": model_name, "case": impl, "xla": xla}

  if impl in ("ours", "ours_fit", "base"):
    model = _build_ours(dims, num_layers, autoregressive)
    variables = model.trainable_variables
    optimizer = keras.optimizers.Adam(cfg["lr"])
    result["init_loss"] = float(-tf.reduce_mean(model.log_prob(batches[0])))
    if impl != "ours_fit":
      train_step = _harness.keras_train_step(model, optimizer, variables, xla)
    sample_fn, log_prob_fn = _harness.eval_functions(model, cfg["batch"], xla)
  else:
    import tf_keras  # pylint: disable=import-outside-toplevel
    tf_keras.utils.set_random_seed(0)
    dist, nets = _build_stock(dims, num_layers, autoregressive)
    variables = [v for net in nets for v in net.trainable_variables]
    optimizer = tf_keras.optimizers.Adam(cfg["lr"])
    optimizer.build(variables)
    result["init_loss"] = float(-tf.reduce_mean(dist.log_prob(batches[0])))

    @tf.function(jit_compile=xla)
    def train_step(x):
      with tf.GradientTape() as tape:
        loss = -tf.reduce_mean(dist.log_prob(x))
      optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
      return loss
    sample_fn, log_prob_fn = _harness.eval_functions(dist, cfg["batch"], xla)

  result["num_params"] = int(sum(np.prod(v.shape) for v in variables))
  seeds = [(tf.constant([7, i], tf.int32),) for i in range(4)]

  # ---- training
  losses = []
  if impl == "ours_fit":
    model.compile(optimizer=optimizer, jit_compile=xla)
    result["first_call_s"], result["train_rates"], _ = _harness.fit_rates(
        model, x_all, cfg["batch"], total_train, cfg["warmup"], cfg["repeats"], cfg["steps"])
    # fit logs a running mean; evaluate the first and last repeats' batches instead.
    result["first_repeat_loss"] = None
    result["last_repeat_loss"] = float(np.mean(
        [-tf.reduce_mean(model(b, training=True)).numpy() for b in batches]))
  else:
    start = time.perf_counter()
    loss = train_step(batches[0])
    _harness.sync(loss)
    result["first_call_s"] = time.perf_counter() - start
    result["first_step_loss"] = float(loss)
    steps_done = 1
    for i in range(cfg["warmup"]):
      loss = train_step(batches[(steps_done + i) % len(batches)])
    _harness.sync(loss)
    steps_done += cfg["warmup"]
    rates = []
    for _ in range(cfg["repeats"]):
      repeat_losses = []
      begin = time.perf_counter()
      for _ in range(cfg["steps"]):
        loss = train_step(batches[steps_done % len(batches)])
        repeat_losses.append(loss)  # no sync: keeps the tensor only
        steps_done += 1
      _harness.sync(loss)
      rates.append(cfg["steps"] / (time.perf_counter() - begin))
      losses.append(float(np.mean([l.numpy() for l in repeat_losses])))
    result["train_rates"] = rates
    result["first_repeat_loss"] = losses[0]
    result["last_repeat_loss"] = losses[-1]
  result["train_steps_total"] = total_train
  if impl == "stock" and autoregressive:
    result["made_mask_violation"] = _made_mask_violation(nets)

  # ---- sampling and log_prob throughput
  start = time.perf_counter()
  samples = sample_fn(*seeds[0]).numpy()
  result["sample_first_call_s"] = time.perf_counter() - start
  result["samples_finite"] = bool(np.isfinite(samples).all())
  result["sample_rates"], result["sample_calls"] = _harness.timed_rates(
      sample_fn, seeds, cfg["eval_repeats"], cfg["eval_seconds"], cfg["batch"])
  start = time.perf_counter()
  _harness.sync(log_prob_fn(batches[0]))
  result["log_prob_first_call_s"] = time.perf_counter() - start
  result["log_prob_rates"], result["log_prob_calls"] = _harness.timed_rates(
      log_prob_fn, [(b,) for b in batches], cfg["eval_repeats"], cfg["eval_seconds"],
      cfg["batch"])
  result["peak_rss_mb"] = _harness.peak_rss_mb()
  _harness.emit(_MARKER, result)


# ----------------------------------------------------------------------------- parent


def _spawn(spec, argv_flags):
  env = _harness.worker_env(_ONEDNN.value)
  if spec.split(":")[1] == "base":
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.abspath(_BASELINE.value)] + env.get("PYTHONPATH", "").split(os.pathsep))
  meter = _harness.CpuMeter()
  proc = subprocess.run(_harness.worker_command(__file__, spec, argv_flags),
                        capture_output=True, text=True, env=env, check=False)
  usage = meter.stop()
  out = _harness.parse_result(proc.stdout, _MARKER)
  if out is not None:
    return {**out, **usage}
  sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
  raise RuntimeError(f"worker {spec} failed with exit code {proc.returncode}")


def _merge(runs):
  """Pools the repeats of several rounds of one case."""
  merged = _harness.merge_rounds(runs)
  merged["samples_finite"] = all(run["samples_finite"] for run in runs)
  for key in ("first_call_s", "sample_first_call_s", "log_prob_first_call_s"):
    merged[key] = _harness.median([run[key] for run in runs])
  merged["wall_s"] = sum(run["wall_s"] for run in runs)
  merged["other_cores"] = max(run["other_cores"] for run in runs)
  return merged


def _fmt_loss(value):
  return "-" if value is None else f"{value:.1f}"


def _table(results):
  header = ("| model | case | XLA | train steps/s | vs stock | first step s | "
            "log_prob pts/s | vs stock | sample/s | vs stock | peak RSS MB | params | "
            "loss init -> first / last repeat | samples finite | other procs' cores |")
  lines = _harness.table_header(header)
  stock = {(r["model"], r["xla"]): r for r in results if r["case"] == "stock"}
  for r in results:
    s = stock.get((r["model"], r["xla"]))
    train = _harness.median(r["train_rates"])
    samp = _harness.median(r["sample_rates"])
    lp = _harness.median(r["log_prob_rates"])
    is_stock = r["case"] == "stock"
    ratio = (lambda key, value: "1.00x" if is_stock else
             _harness.ratio(value, _harness.median(s[key]) if s else None))
    lines.append(
        f"| {r['model']} | {r['case']} | {'on' if r['xla'] else 'off'} | {train:.1f} | "
        f"{ratio('train_rates', train)} | {r['first_call_s']:.1f} | {lp:,.0f} | "
        f"{ratio('log_prob_rates', lp)} | {samp:,.0f} | {ratio('sample_rates', samp)} | "
        f"{r['peak_rss_mb']:.0f} | {r['num_params']:,} | "
        f"{r['init_loss']:.1f} -> {_fmt_loss(r['first_repeat_loss'])} / "
        f"{_fmt_loss(r['last_repeat_loss'])} | {'yes' if r['samples_finite'] else 'NO'} | "
        f"{r['other_cores']:.2f} |")
  return "\n".join(lines)


def _spread(results):
  lines = ["train steps/s per repeat (min / median / max); compile s of sample and "
           "log_prob; eval calls per repeat:"]
  for r in results:
    t = r["train_rates"]
    extra = ""
    if "made_mask_violation" in r:
      extra = f", stock MADE max |masked kernel entry| {r['made_mask_violation']:.1e}"
    lines.append(
        f"  {r['model']:5s} {r['case']:8s} xla={'on ' if r['xla'] else 'off'} "
        f"{_harness.spread(t)} (n={len(t)}); "
        f"first sample {r['sample_first_call_s']:.1f}s, first log_prob "
        f"{r['log_prob_first_call_s']:.1f}s; calls {r['sample_calls']}/"
        f"{r['log_prob_calls']}; worker wall {r['wall_s']:.0f}s{extra}")
  return "\n".join(lines)


def _versus_base(results):
  """ours / base (the --baseline_src version) per model and XLA setting."""
  base = {(r["model"], r["xla"]): r for r in results if r["case"] == "base"}
  lines = ["ours / base (same run):"]
  for r in results:
    b = base.get((r["model"], r["xla"]))
    if r["case"] != "ours" or b is None:
      continue
    ratios = [f"{name} {_harness.ratio(_harness.median(r[key]), _harness.median(b[key]))}"
              for name, key in (("train", "train_rates"), ("log_prob", "log_prob_rates"),
                                ("sample", "sample_rates"))]
    lines.append(f"  {r['model']:5s} xla={'on ' if r['xla'] else 'off'} " + ", ".join(ratios))
  return "\n".join(lines)


def main(argv):
  del argv
  if _WORKER.value:
    _run_worker(_WORKER.value)
    return
  _harness.check_choices("models", _MODELS.value, tuple(_MODEL_SPECS))
  cases = list(_CASES.value)
  _harness.check_choices("cases", cases, ("ours", "stock"))
  if _BASELINE.value:
    base_root = os.path.join(os.path.abspath(_BASELINE.value), "tfp_flows")
    if not os.path.isfile(os.path.join(base_root, "__init__.py")):
      raise app.UsageError(f"--baseline_src={_BASELINE.value!r} has no tfp_flows package.")
    cases.append("base")
  _harness.check_choices("xla", _XLA.value, ("on", "off"))
  passthrough = [a for a in sys.argv[1:]
                 if not a.startswith(("--models", "--cases", "--xla", "--rounds",
                                      "--json_out", "--onednn", "--fit", "--quiet",
                                      "--baseline_src"))]
  settings = _settings()
  onednn = (os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset")
            if _ONEDNN.value == "default" else _ONEDNN.value)
  print(f"NSF benchmark: {_NUM_BINS} bins, bound {_BOUND}, hidden {_HIDDEN}, batch "
        f"{_BATCH.value}, Adam lr {_LR.value}, float32; {settings['repeats']} repeats x "
        f"{settings['steps']} steps after {settings['warmup']} warm-up steps; rounds "
        f"{_ROUNDS.value}; TF_ENABLE_ONEDNN_OPTS={onednn}; load average {_harness.load_average()}.",
        flush=True)
  fingerprint = _harness.fingerprint()
  print(f"tfp_flows: {fingerprint}", flush=True)
  if _BASELINE.value:
    print(f"baseline (case base): {_harness.fingerprint(base_root)}", flush=True)
  specs = []
  for m in _MODELS.value:
    for x in _XLA.value:
      specs += [f"{m}:{c}:{x}" for c in cases]
      for fit in _FIT.value:
        if fit == f"{m}:{x}":
          specs.append(f"{m}:ours_fit:{x}")
  runs = {s: [] for s in specs}
  start = time.perf_counter()
  total_waited = 0.0
  for round_ in range(_ROUNDS.value):
    for spec in specs:
      waited = _harness.wait_for_quiet(_QUIET_WAIT.value, _QUIET_CORES.value)
      load_before = _harness.load_average()
      out = _spawn(spec, passthrough)
      out["waited_s"] = waited
      total_waited += waited
      runs[spec].append(out)
      print(f"  round {round_ + 1} {spec:20s} train {_harness.median(out['train_rates']):6.1f} "
            f"steps/s, log_prob {_harness.median(out['log_prob_rates']):8.0f}/s, sample "
            f"{_harness.median(out['sample_rates']):8.0f}/s ({out['wall_s']:.0f}s after waiting "
            f"{out['waited_s']:.0f}s; other processes used {out['other_cores']:.2f} "
            f"cores; load before {load_before}, after {_harness.load_average()})", flush=True)
  results = [_merge(runs[s]) for s in specs]
  print()
  for m in _MODELS.value:
    print(f"{m}: {_MODEL_SPECS[m][3]}")
  print()
  print(_table(results))
  print()
  print(_spread(results))
  if _BASELINE.value:
    print(_versus_base(results))
  print(f"\ntotal wall time {time.perf_counter() - start:.0f}s (of which waiting for a "
        f"quiet machine {total_waited:.0f}s); load average {_harness.load_average()}")
  _harness.warn_if_changed(fingerprint)
  if _JSON_OUT.value:
    with open(_JSON_OUT.value, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  app.run(main)
