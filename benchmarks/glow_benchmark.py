"""Glow 8x8x1 benchmark: tfp_flows' Glow preset against stock `tfp.bijectors.Glow`.

The DESIGN's Glow case: 8x8x1 images, one scale squeezing to 4x4x4, 8 steps, conv nets
of 64 hidden channels, batch 256, Adam (lr 1e-3), float32, with and without XLA.

* `ours`: `tfp_flows.models.Glow([8, 8, 1], num_scales=1, steps_per_scale=8,
  hidden_channels=64, num_bits=5)` trained by a custom `tf.function` step
  (GradientTape over `-mean(model(x, training=True))`, Keras 3 Adam `apply`).
* `ours_fit`: the same model trained by `model.fit` (one long epoch; steps/s from
  per-batch timestamps, so per-epoch overhead and compilation are excluded).
* `stock`: `tfb.Glow(output_shape=(8, 8, 1), num_glow_blocks=1, num_steps_per_block=8,
  coupling_bijector_fn=GlowDefaultNetwork(num_hidden=64))` (tf_keras conv nets), in a
  `tfd.TransformedDistribution` over a standard normal, trained by the same kind of
  custom `tf.function` step with tf_keras Adam on `trainable_variables`.

Both see the same data and preprocessing: scikit-learn's 8x8 digits (integers in
[0, 17)), dequantised with U[0, 1) noise in every training step, in a 5-bit pixel space
mapped by the same bijector chain `Scale(32) o Logit(alpha=0.05)` (for `ours` this is
the preset's `Dequantize` layer; for `stock` that bijector chain is put in front of
`tfb.Glow`). So both losses are the same NLL in the same space; the table shows it.

Each case runs in its own subprocess (separate peak RSS). Reported per case: training
steps/s (median over repeats of timed steps after warm-up), sampling samples/s
(`sample(256)`), log_prob points/s (batches of 256), peak RSS, ratios ours/stock with the
same XLA setting, the first-call (trace + compile) time, the final training NLL in
bits/dim, and whether 4 x 256 samples are finite in logit space (before the sigmoid and
the flooring to integer pixels, which would hide infinities) after `--finite_steps`
training steps.

Usage:
  python benchmarks/glow_benchmark.py            # full run, a few minutes on 2 cores
  python benchmarks/glow_benchmark.py --quick    # fewer repeats and steps
  python benchmarks/glow_benchmark.py --rounds=2 # run every case twice, pool repeats
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
_CASES = flags.DEFINE_list("cases", ["ours", "stock", "ours_fit"],
                          "Cases among ours, stock, ours_fit.")
_XLA = flags.DEFINE_list("xla", ["off", "on"], "XLA settings to run: off, on.")
_ROUNDS = flags.DEFINE_integer("rounds", 1,
                               "Run every case this many times (interleaved) and pool "
                               "the repeats; helps when the machine is noisy.",
                               lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", None, "Timed repeats (default 7, quick 5).")
_STEPS = flags.DEFINE_integer("steps_per_repeat", None,
                              "Training steps per timed repeat (default 20, quick 10).")
_WARMUP = flags.DEFINE_integer("warmup_steps", 5, "Untimed steps after the first call.")
_FINITE_STEPS = flags.DEFINE_integer(
    "finite_steps", None, "Total training steps before the finiteness check "
    "(default 150, quick 60).")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Batch size.")
_HIDDEN = flags.DEFINE_integer("hidden_channels", 64, "Conv net width.")
_STEPS_PER_SCALE = flags.DEFINE_integer("glow_steps", 8, "Glow steps in the scale.")
_LR = flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
_ONEDNN = flags.DEFINE_enum(
    "onednn", "default", ["default", "on", "off"],
    "TF_ENABLE_ONEDNN_OPTS for the workers (default: inherit; TF leaves oneDNN off on "
    "CPUs without AVX-512 VNNI/BF16/AMX, e.g. this AMD EPYC).")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the results as JSON here.")
_WORKER = flags.DEFINE_string("worker", None, "Internal: run one case, e.g. ours:on.")

_MARKER = "GLOW_BENCHMARK_RESULT "
_NUM_BITS = 5
_ALPHA = 0.05
_IMAGE_SHAPE = (8, 8, 1)


# ----------------------------------------------------------------------------- worker


def _settings():
  quick = _QUICK.value
  return {
      "repeats": _REPEATS.value or (5 if quick else 7),
      "steps": _STEPS.value or (10 if quick else 20),
      "warmup": _WARMUP.value,
      "finite_steps": _FINITE_STEPS.value or (60 if quick else 150),
      "eval_repeats": 5 if quick else 7,
      "eval_calls": 5 if quick else 10,
  }


def _load_data(batch_size):
  import numpy as np  # pylint: disable=import-outside-toplevel
  from tfp_flows import data  # pylint: disable=import-outside-toplevel
  (x_train, _), _ = data.load_digits_images(seed=0)
  rng = np.random.default_rng(0)
  num_batches = 8
  idx = rng.integers(0, len(x_train), size=(num_batches, batch_size))
  return x_train, [x_train[i] for i in idx]


def _build_ours(cfg):
  import tfp_flows as tff  # pylint: disable=import-outside-toplevel
  return tff.models.Glow(list(_IMAGE_SHAPE), num_scales=1, steps_per_scale=cfg["glow_steps"],
                         hidden_channels=cfg["hidden"], num_bits=_NUM_BITS)


def _ours_logit_space_bijector(model):
  import tensorflow_probability as tfp  # pylint: disable=import-outside-toplevel
  # flow_layers[0] is Dequantize (logit space <-> pixels); the rest is the Glow proper.
  return tfp.bijectors.Chain([l.bijector for l in model.flow_layers[1:]])


def _build_stock(cfg):
  """Stock TFP Glow with the same preprocessing bijector as our Dequantize layer."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow_probability as tfp  # pylint: disable=import-outside-toplevel
  from tfp_flows.bijectors import preprocessing  # pylint: disable=import-outside-toplevel
  tfb, tfd = tfp.bijectors, tfp.distributions
  hidden = cfg["hidden"]
  glow = tfb.Glow(
      output_shape=_IMAGE_SHAPE, num_glow_blocks=1, num_steps_per_block=cfg["glow_steps"],
      coupling_bijector_fn=lambda shape: tfb.GlowDefaultNetwork(shape, num_hidden=hidden),
      exit_bijector_fn=tfb.GlowDefaultExitNetwork, seed=0)
  # Data side: v = x + u in [0, 32) <- Scale(32) <- Logit(0.05) <- Glow <- N(0, I).
  dequantize = tfb.Chain([tfb.Scale(float(2 ** _NUM_BITS)), preprocessing.Logit(_ALPHA)])
  base = tfd.Sample(tfd.Normal(np.float32(0), np.float32(1)),
                    int(np.prod(_IMAGE_SHAPE)))
  dist = tfd.TransformedDistribution(base, tfb.Chain([dequantize, glow]))
  return glow, base, dist


def _run_worker(spec):
  """Runs one case in this process; prints a JSON line prefixed by _MARKER."""
  impl, xla_name = spec.split(":")
  xla = xla_name == "on"
  cfg = dict(_settings(), hidden=_HIDDEN.value, glow_steps=_STEPS_PER_SCALE.value,
             batch=_BATCH.value, lr=_LR.value)
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import keras  # pylint: disable=import-outside-toplevel

  keras.utils.set_random_seed(0)
  tf.random.set_seed(0)
  x_train, batches_np = _load_data(cfg["batch"])
  batches = [tf.constant(b) for b in batches_np]
  total_train = max(cfg["warmup"] + 1 + cfg["repeats"] * cfg["steps"], cfg["finite_steps"])
  result = {"case": impl, "xla": xla}

  if impl in ("ours", "ours_fit"):
    model = _build_ours(cfg)
    variables = model.trainable_variables
    optimizer = keras.optimizers.Adam(cfg["lr"])
    if impl == "ours":
      train_step = _harness.keras_train_step(model, optimizer, variables, xla)
    sample_fn, log_prob_fn = _harness.eval_functions(model, cfg["batch"], xla)

    logit_bijector = _ours_logit_space_bijector(model)
    base = model.base_distribution

    @tf.function(jit_compile=xla)
    def logit_sample_fn(seed):
      return logit_bijector.forward(base.sample(cfg["batch"], seed=seed))
  else:
    import tf_keras  # pylint: disable=import-outside-toplevel
    glow, base, dist = _build_stock(cfg)
    variables = dist.trainable_variables
    optimizer = tf_keras.optimizers.Adam(cfg["lr"])
    optimizer.build(variables)
    noise = tf.random.Generator.from_seed(0)

    @tf.function(jit_compile=xla)
    def train_step(x):
      v = x + noise.uniform(tf.shape(x), dtype=x.dtype)
      with tf.GradientTape() as tape:
        loss = -tf.reduce_mean(dist.log_prob(v))
      optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
      return loss

    @tf.function(jit_compile=xla)
    def sample_fn(seed):
      v = dist.sample(cfg["batch"], seed=seed)
      return tf.clip_by_value(tf.floor(v), 0.0, float(2 ** _NUM_BITS - 1))

    @tf.function(jit_compile=xla)
    def log_prob_fn(x):
      return dist.log_prob(x + 0.5)

    @tf.function(jit_compile=xla)
    def logit_sample_fn(seed):
      return glow.forward(base.sample(cfg["batch"], seed=seed))

  result["num_params"] = int(sum(np.prod(v.shape) for v in variables))
  seeds = [(tf.constant([7, i], tf.int32),) for i in range(4)]
  bits_per_nat = 1.0 / (math.log(2.0) * np.prod(_IMAGE_SHAPE))

  # ---- training
  if impl == "ours_fit":
    model.compile(optimizer=optimizer, jit_compile=xla)
    result["first_call_s"], result["train_rates"], _ = _harness.fit_rates(
        model, x_train, cfg["batch"], total_train, cfg["warmup"], cfg["repeats"],
        cfg["steps"])
    # fit logs the running mean over the epoch; report the last step's loss instead.
    last_nll = float(-tf.reduce_mean(model(batches[0], training=True)))
  else:
    start = time.perf_counter()
    loss = train_step(batches[0])
    _harness.sync(loss)
    result["first_call_s"] = time.perf_counter() - start
    steps_done = 1
    for i in range(cfg["warmup"]):
      loss = train_step(batches[(steps_done + i) % len(batches)])
    _harness.sync(loss)
    steps_done += cfg["warmup"]
    rates = []
    for _ in range(cfg["repeats"]):
      begin = time.perf_counter()
      for _ in range(cfg["steps"]):
        loss = train_step(batches[steps_done % len(batches)])
        steps_done += 1
      _harness.sync(loss)
      rates.append(cfg["steps"] / (time.perf_counter() - begin))
    result["train_rates"] = rates
    while steps_done < total_train:
      loss = train_step(batches[steps_done % len(batches)])
      steps_done += 1
    last_nll = float(loss)
  result["train_steps_total"] = total_train
  result["final_bits_per_dim"] = last_nll * bits_per_nat

  # ---- finiteness after training: 4 x 256 samples in logit space (before the sigmoid
  # and the flooring, which would turn inf into a valid pixel) and as pixels.
  start = time.perf_counter()
  pixels = np.stack([sample_fn(*seed).numpy() for seed in seeds])
  result["sample_first_call_s"] = time.perf_counter() - start
  logits = np.stack([logit_sample_fn(*seed).numpy() for seed in seeds])
  flat = logits.reshape(-1, int(np.prod(_IMAGE_SHAPE)))
  finite = np.isfinite(flat)
  result["finite_fraction"] = float(finite.all(axis=1).mean())
  result["max_abs_logit"] = float(np.max(np.abs(flat[finite]))) if finite.any() else None
  result["pixel_finite_fraction"] = float(
      np.isfinite(pixels.reshape(len(flat), -1)).all(axis=1).mean())

  # ---- sampling and log_prob throughput
  _harness.sync(sample_fn(*seeds[1]))
  result["sample_rates"] = _harness.timed_calls(sample_fn, seeds, cfg["eval_repeats"],
                                        cfg["eval_calls"], cfg["batch"])
  start = time.perf_counter()
  _harness.sync(log_prob_fn(batches[0]))
  result["log_prob_first_call_s"] = time.perf_counter() - start
  _harness.sync(log_prob_fn(batches[1]))
  result["log_prob_rates"] = _harness.timed_calls(log_prob_fn, [(b,) for b in batches],
                                          cfg["eval_repeats"], cfg["eval_calls"],
                                          cfg["batch"])
  result["peak_rss_mb"] = _harness.peak_rss_mb()
  _harness.emit(_MARKER, result)


# ----------------------------------------------------------------------------- parent


def _spawn(spec, argv_flags):
  meter = _harness.CpuMeter()
  proc = subprocess.run(_harness.worker_command(__file__, spec, argv_flags),
                        capture_output=True, text=True,
                        env=_harness.worker_env(_ONEDNN.value), check=False)
  out = _harness.parse_result(proc.stdout, _MARKER)
  if out is not None:
    return {**out, "wall_s": meter.elapsed()}
  sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
  raise RuntimeError(f"worker {spec} failed with exit code {proc.returncode}")


def _merge(runs):
  """Pools the repeats of several rounds of one case."""
  merged = _harness.merge_rounds(runs)
  merged["finite_fraction"] = min(run["finite_fraction"] for run in runs)
  merged["pixel_finite_fraction"] = min(run["pixel_finite_fraction"] for run in runs)
  merged["max_abs_logit"] = max(run["max_abs_logit"] or float("inf") for run in runs)
  merged["first_call_s"] = _harness.median([run["first_call_s"] for run in runs])
  merged["final_bits_per_dim"] = _harness.median([run["final_bits_per_dim"] for run in runs])
  return merged


def _table(results):
  header = ("| case | XLA | train steps/s | vs stock | sample/s | vs stock | "
            "log_prob pts/s | vs stock | peak RSS MB | first step s | params | "
            "NLL bits/dim | samples finite after N steps | max abs logit |")
  lines = _harness.table_header(header)
  stock = {r["xla"]: r for r in results if r["case"] == "stock"}
  for r in results:
    s = stock.get(r["xla"])
    train = _harness.median(r["train_rates"])
    samp = _harness.median(r["sample_rates"])
    lp = _harness.median(r["log_prob_rates"])
    is_stock = r["case"] == "stock"
    ratio = (lambda key, value: "1.00x" if is_stock else
             _harness.ratio(value, _harness.median(s[key]) if s else None))
    bad = 1.0 - min(r["finite_fraction"], r["pixel_finite_fraction"])
    finite = ("yes" if bad == 0.0 else f"NO ({100 * bad:.1f}% of samples)")
    lines.append(
        f"| {r['case']} | {'on' if r['xla'] else 'off'} | {train:.1f} | "
        f"{ratio('train_rates', train)} | {samp:,.0f} | {ratio('sample_rates', samp)} | "
        f"{lp:,.0f} | {ratio('log_prob_rates', lp)} | {r['peak_rss_mb']:.0f} | "
        f"{r['first_call_s']:.1f} | {r['num_params']:,} | "
        f"{r['final_bits_per_dim']:.3f} | {finite} (N={r['train_steps_total']}) | "
        f"{r['max_abs_logit']:.3g} |")
  return "\n".join(lines)


def _spread(results):
  lines = ["train steps/s per repeat (min / median / max):"]
  for r in results:
    t = r["train_rates"]
    lines.append(f"  {r['case']:9s} xla={'on ' if r['xla'] else 'off'} "
                 f"{_harness.spread(t)}   "
                 f"(n={len(t)}, worker wall {r['wall_s']:.0f}s)")
  return "\n".join(lines)


def main(argv):
  del argv
  if _WORKER.value:
    _run_worker(_WORKER.value)
    return
  _harness.check_choices("cases", _CASES.value, ("ours", "stock", "ours_fit"))
  _harness.check_choices("xla", _XLA.value, ("on", "off"))
  passthrough = [a for a in sys.argv[1:]
                 if not a.startswith(("--cases", "--xla", "--rounds", "--json_out", "--onednn"))]
  settings = _settings()
  print(f"Glow 8x8x1 -> 4x4x4, {_STEPS_PER_SCALE.value} steps, hidden "
        f"{_HIDDEN.value}, batch {_BATCH.value}, Adam lr {_LR.value}, float32; "
        f"{settings['repeats']} repeats x {settings['steps']} steps after "
        f"{settings['warmup']} warm-up steps; rounds {_ROUNDS.value}; "
        f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset') if _ONEDNN.value == 'default' else _ONEDNN.value}.",
        flush=True)
  specs = [f"{c}:{x}" for x in _XLA.value for c in _CASES.value]
  runs = {s: [] for s in specs}
  start = time.perf_counter()
  for round_ in range(_ROUNDS.value):
    for spec in specs:
      out = _spawn(spec, passthrough)
      runs[spec].append(out)
      print(f"  round {round_ + 1} {spec:12s} train {_harness.median(out['train_rates']):6.1f} "
            f"steps/s, sample {_harness.median(out['sample_rates']):8.0f}/s, log_prob "
            f"{_harness.median(out['log_prob_rates']):8.0f}/s ({out['wall_s']:.0f}s)", flush=True)
  results = [_merge(runs[s]) for s in specs]
  for r, s in zip(results, specs):
    r["wall_s"] = sum(run["wall_s"] for run in runs[s])
  print()
  print(_table(results))
  print()
  print(_spread(results))
  print(f"\ntotal wall time {time.perf_counter() - start:.0f}s")
  if _JSON_OUT.value:
    with open(_JSON_OUT.value, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  app.run(main)
