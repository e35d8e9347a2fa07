"""tfp_flows (ours) on the peer models, same data / batch / timing protocol as tf_bench.py. Usage:
  TF_CPP_MIN_LOG_LEVEL=2 $PEERS/tfv/bin/python tfpflows_bench.py MODEL MODE
  MODEL in {nsf2d, nsf64, nsf2d_scan, nsf64_scan, glow, glowl, res2d, res64, ffjord2d, tarflow}
    nsf*_scan = the same NSF preset with scan_blocks=True (one CouplingScan loop over the blocks)
    glow  = the tff.models.Glow preset (integer digits, its own Dequantize + learned top prior)
    glowl = tff.FlowModel([Squeeze, 8 x GlowStep]) on exactly stock's float batches (no preset extras)
    tarflow = the tff.models.TarFlow preset on the same integer digits as glow, sized to the Glow preset's
          parameter count (issue 16: training steps/s vs Glow at a similar parameter count; no peer has it)
  MODE in {fn, xla, fit, fit_spe}
    fn  = tf.function train step (tape + keras Adam.apply), as tf_bench.py
    xla = the same with tf.function(jit_compile=True)
    fit = keras model.fit(jit_compile=True), one epoch over 1 + STEPS*(1+REPEATS) batches of the same pool,
          steps/s from per-batch timestamps (a callback); sampling is not timed (see xla)
    fit_spe = fit as users run it: jit_compile=True, steps_per_execution=STEPS, no per-batch callback;
          1 + REPEATS epochs of EPOCH_BATCHES batches (a small data set's epoch; the per-epoch cost of
          Keras' iterator and callbacks is in the figure), steps/s from the epoch-end timestamps (the first epoch,
          with the compile, is the warm-up)
Env: STEPS (20) REPEATS (5) EPOCH_BATCHES (100, fit_spe) NSAMP (10000) SAMPLE_REPEATS (5) BENCH_OUT (jsonl path);
  ffjord2d is the peers' model: time_conditioning="concat" (an MLP on [z, t], 8,706 weights as stock's) starting
  from common.ffjord_field_init's weights, as stock TFP and torchdiffeq do (equal model, equal initialisation).
  FFJORD_FIELD=concat_squash (ffjord2d only): the library's default field instead (concat-squash layers, 9,224
  weights, zero last layer: the identity flow at step 0); mode "<MODE>-concat_squash".
Public tfp_flows API only (tff.models.*, tff.FlowModel, tff.layers.*)."""
import os, sys, time, statistics, subprocess
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from common import report, moons, digits, dequant_batch, time_train_steps, timeit_repeats, ffjord_field_init
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(2)
tf.config.threading.set_inter_op_parallelism_threads(2)
import tensorflow_probability as tfp
import keras
import tfp_flows as tff

MODEL, MODE = sys.argv[1], sys.argv[2]
MODELS = ("nsf2d", "nsf64", "nsf2d_scan", "nsf64_scan", "glow", "glowl", "res2d", "res64", "ffjord2d", "tarflow")
if MODEL not in MODELS or MODE not in ("fn", "xla", "fit", "fit_spe"):
    raise SystemExit(__doc__)
JIT = MODE in ("xla", "fit", "fit_spe")
STEPS = int(os.environ.get("STEPS", 20)); REPEATS = int(os.environ.get("REPEATS", 5))
EPOCH_BATCHES = int(os.environ.get("EPOCH_BATCHES", 100))
NSAMP = int(os.environ.get("NSAMP", 10000)); SREP = int(os.environ.get("SAMPLE_REPEATS", 5))
BATCH, K, B, HID = 256, 8, 3.0, 128
keras.utils.set_random_seed(0); tf.random.set_seed(0); rng = np.random.default_rng(0)
FFJORD_FIELD = os.environ.get("FFJORD_FIELD", "concat")   # ffjord2d only; other than concat: mode "<MODE>-<field>"
if FFJORD_FIELD != "concat" and MODEL != "ffjord2d":
    raise SystemExit("FFJORD_FIELD applies to ffjord2d only")
MODE_SUFFIX = "" if FFJORD_FIELD == "concat" else "-" + FFJORD_FIELD

# ---------------------------------------------------------------- data: the same pools as tf_bench.py / torch_bench.py
if MODEL in ("nsf2d", "nsf2d_scan", "res2d", "ffjord2d"):
    data = moons(BATCH * 20, seed=1); pool_np = [data[i * BATCH:(i + 1) * BATCH] for i in range(20)]
else:
    X = digits(); pool_np = []
    for i in range(20):
        idx = rng.integers(0, len(X), BATCH)
        xb = dequant_batch(X[idx], rng)          # always drawn, so the rng stream (and the images) match stock's
        if MODEL in ("glow", "tarflow"):           # the presets dequantise integer pixels themselves
            pool_np.append(X[idx].reshape(BATCH, 8, 8, 1).astype("float32"))
        else:
            pool_np.append(xb.reshape(BATCH, 8, 8, 1) if MODEL == "glowl" else xb)
pool = [tf.constant(b) for b in pool_np]

# ---------------------------------------------------------------- models (public API only)
def nsf(d, L, scan_blocks=False):
    m = tff.models.NeuralSplineFlow(d, num_layers=L, num_bins=K, bound=B, hidden_units=(HID, HID),
                                    autoregressive=False, linear="permute", actnorm=False, scan_blocks=scan_blocks)
    return m, (f"coupling RQS L={L} K={K} B={B:g} MLP{HID}x2; tff.models.NeuralSplineFlow(linear='permute', "
               f"actnorm=False, scan_blocks={scan_blocks}): a reversal Permute before every coupling (stock: between "
               f"couplings), which alternates the halves" + ("; the blocks as one CouplingScan loop" if scan_blocks else ""))

def glow_preset():
    m = tff.models.Glow([8, 8, 1], num_scales=1, steps_per_scale=8, hidden_channels=64, num_bits=5)
    return m, ("Glow preset num_scales=1 steps_per_scale=8 hidden 64 (affine sigmoid coupling, LU 1x1, actnorm), "
               "8x8x1->4x4x4; differs from stock: integer digits in, Dequantize(5 bits, U[0,1) noise, logit 0.05) "
               "layer, learned top GaussianPrior (+8 params); samples are floored+clipped pixels, so sample_finite "
               "only catches NaN (inf clips to 0/31; glowl checks the raw samples)")

def glow_layers():
    m = tff.FlowModel([tff.layers.Squeeze(2)] + [tff.layers.GlowStep(hidden_channels=64, seed=i) for i in range(8)],
                      event_shape=[8, 8, 1])
    return m, ("tff.FlowModel([Squeeze(2)] + 8 x GlowStep(hidden 64: affine sigmoid coupling, LU 1x1, actnorm)), "
               "8x8x1->4x4x4, same float batches as stock, N(0,1) base")

def tarflow():
    m = tff.models.TarFlow([8, 8, 1], patch_size=2, channels=34, num_blocks=4, layers_per_block=1, heads=2,
                           noise_std=0.0, num_bits=5)
    return m, ("TarFlow preset 8x8x1, patches 2x2 (16 tokens), 4 blocks x 1 layer, width 34, 2 heads (61,640 weights), no training "
               "noise, 5 bits (Dequantize + logit like glow); sized to the Glow preset's parameter count; sampling "
               "is the KV-cache loop")

def resflow(d, L):
    m = tff.models.ResidualFlow([d], num_blocks=L, hidden_units=(HID, HID), lipschitz=0.9, log_det="russian_roulette",
                                num_exact_terms=2, actnorm=False, gradient="neumann", power_iterations=5)
    return m, (f"{L} ResidualBlock(SN-MLP [{d},{HID},{HID},{d}] LipSwish, coeff .9, 5 power its/training call) "
               f"roulette geom p=.5, 2 exact terms, neumann grad; tff.models.ResidualFlow(actnorm=False); "
               f"activations between layers (normflows: also before the first)")

def ffjord():
    m = tff.FlowModel([tff.layers.FFJORD(hidden_units=(64, 64, 64), activation="tanh", trace="hutchinson",
                                         noise="gaussian", solver="dopri5", rtol=1e-5, atol=1e-5,
                                         gradient="adjoint", time_conditioning=FFJORD_FIELD)], event_shape=[2])
    cfg = (f"FFJORD MLP64x3 tanh, time_conditioning={FFJORD_FIELD}, Hutchinson(normal), dopri5 rtol=atol=1e-5, "
           "adjoint; tff.FlowModel([tff.layers.FFJORD(noise='gaussian')]) (the FFJORDFlow preset has no noise= and "
           "defaults to actnorm=True); ")
    if FFJORD_FIELD == "concat":   # public Keras API: the field's weights in Keras order, as common.py draws them
        m.set_weights(ffjord_field_init())
        return m, cfg + "common.ffjord_field_init weights (as stock and torchdiffeq)"
    return m, cfg + "library default init: zero last layer = identity flow at step 0"

if MODEL == "nsf2d": model, cfg = nsf(2, 4)
elif MODEL == "nsf64": model, cfg = nsf(64, 8)
elif MODEL == "nsf2d_scan": model, cfg = nsf(2, 4, scan_blocks=True)
elif MODEL == "nsf64_scan": model, cfg = nsf(64, 8, scan_blocks=True)
elif MODEL == "glow": model, cfg = glow_preset()
elif MODEL == "glowl": model, cfg = glow_layers()
elif MODEL == "res2d": model, cfg = resflow(2, 4)
elif MODEL == "res64": model, cfg = resflow(64, 8)
elif MODEL == "ffjord2d": model, cfg = ffjord()
elif MODEL == "tarflow": model, cfg = tarflow()

STOCK_PARAMS = {"nsf2d": 78940, "nsf64": 925440, "nsf2d_scan": 78940, "nsf64_scan": 925440, "glow": 61664, "glowl": 61664, "res2d": 68636, "res64": 264744,
                "ffjord2d": 8706, "tarflow": 61832}   # tarflow: compared with the Glow preset's count   # tf_bench.py (tfp) / torch_bench.py (normflows for res*), results.jsonl 2026-11-22
variables = model.trainable_variables
nparams = int(sum(np.prod(v.shape) for v in variables))
dev = nparams / STOCK_PARAMS[MODEL] - 1
if abs(dev) > 0.03:
    cfg += f"; PARAMS {nparams} vs stock {STOCK_PARAMS[MODEL]} ({dev:+.1%})"
if MODE == "fit":
    cfg += "; fit: 1 epoch, steps_per_execution=1, timestamp callback (per-batch log sync)"
if MODE == "fit_spe":
    cfg += (f"; fit: steps_per_execution={STEPS}, no per-batch callback, epochs of {EPOCH_BATCHES} batches, "
            "epoch-end timestamps")
opt = keras.optimizers.Adam(1e-3)

def nfe_of(m):   # FFJORD layers report the evaluations of their last forward solve ("nfe") and, once the
    # gradient is built, of the adjoint's backward solve ("adjoint_nfe"): [forward, backward]
    stats = [l.last_statistics for l in m.flow_layers if "nfe" in getattr(l, "last_statistics", {})]
    total = lambda key: tf.add_n([s[key] for s in stats if key in s]) if any(key in s for s in stats) else tf.constant(0.0)
    return tf.stack([total("nfe"), total("adjoint_nfe")])

def loss_fn(x):
    loss = -tf.reduce_mean(model(x, training=True))
    if model.losses:
        loss += tf.add_n(model.losses)
    return loss

@tf.function(jit_compile=JIT, reduce_retracing=True)
def train_step(x):
    with tf.GradientTape() as tape:
        loss = loss_fn(x)
    g = tape.gradient(loss, variables)
    opt.apply(g, variables)
    return loss, nfe_of(model)

@tf.function(jit_compile=JIT)
def sample_fn(seed):
    return model.sample(NSAMP, seed=seed)

try:
    commit = subprocess.run(["git", "-C", os.path.dirname(os.path.dirname(os.path.abspath(tff.__file__))), "rev-parse",
                             "--short", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
except Exception:
    commit = ""
rec = dict(bench=MODEL, framework="tfp_flows", mode=MODE + MODE_SUFFIX, tf=tf.__version__, tfp=tfp.__version__,
           keras=keras.__version__, tfp_flows=tff.__version__, commit=commit, cfg=cfg,
           batch=BATCH, params=nparams, params_stock=STOCK_PARAMS[MODEL], steps=STEPS, repeats=REPEATS)
err = None
if MODE not in ("fit", "fit_spe"):
    opt.build(variables)
    try:
        (l0, nfe0), (loss, nfe) = time_train_steps(train_step, pool, lambda out: float(out[0]),
                                                   STEPS, REPEATS, rec)
        rec["loss_first_last"] = [round(float(l0), 3), round(float(loss), 3)]
        if MODEL == "ffjord2d":
            rec["nfe_train_forward"] = [int(nfe0[0]), int(nfe[0])]   # first / last step, forward solve
            rec["nfe_train_adjoint"] = [int(nfe0[1]), int(nfe[1])]   # the adjoint's backward solve
    except Exception as e:
        import traceback; traceback.print_exc()
        err = f"train: {type(e).__name__}: {str(e)[:400]}"
    try:
        seeds = [tf.constant([7, i], tf.int32) for i in range(SREP + 1)]
        t0 = time.perf_counter(); s = sample_fn(seeds[0]).numpy(); rec["first_sample_s"] = round(time.perf_counter() - t0, 2)
        rec["sample_finite"] = bool(np.isfinite(s).all())
        it = iter(seeds[1:])
        ts = timeit_repeats(lambda n: sample_fn(next(it)).numpy(), 1, SREP, warmup=0)
        rec["samples_per_s"] = round(NSAMP / statistics.median(ts), 1)
        if MODEL == "ffjord2d":   # vector-field evaluations of one sampling solve (base -> data, no trace)
            z = model.base_distribution.sample(NSAMP, seed=seeds[0])
            rec["nfe_sample"] = int(model.flow_layers[-1].bijector.solve(z, "forward", log_det=False).num_evaluations)
    except Exception as e:
        import traceback; traceback.print_exc()
        err = (err + " | " if err else "") + f"sample: {type(e).__name__}: {str(e)[:400]}"
elif MODE == "fit_spe":
    xs = np.concatenate([pool_np[i % 20] for i in range(EPOCH_BATCHES)])
    stamps = []
    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            stamps.append((time.perf_counter(), float(logs["nll"]), float(logs.get("nfe", 0.0))))
    try:
        model.compile(optimizer=opt, jit_compile=True, steps_per_execution=STEPS)
        t0 = time.perf_counter()
        model.fit(xs, batch_size=BATCH, epochs=1 + REPEATS, shuffle=False, verbose=0, callbacks=[EpochTimer()])
        rec["first_epoch_s"] = round(stamps[0][0] - t0, 2)   # compile + EPOCH_BATCHES steps
        rates = [EPOCH_BATCHES / (stamps[r + 1][0] - stamps[r][0]) for r in range(REPEATS)]
        rec["steps_per_s"] = round(statistics.median(rates), 2)
        rec["steps_per_s_all"] = [round(r, 2) for r in rates]
        rec["nll_first_and_last_epoch_mean"] = [round(stamps[0][1], 3), round(stamps[-1][1], 3)]
        if MODEL == "ffjord2d":   # the forward solve's field evaluations, epoch means: the cost grows as the field trains
            rec["nfe_train_forward_epoch_means"] = [round(st[2], 1) for st in stamps]
    except Exception as e:
        import traceback; traceback.print_exc()
        err = f"fit_spe: {type(e).__name__}: {str(e)[:400]}"
else:
    total = 1 + STEPS * (1 + REPEATS)
    xs = np.concatenate([pool_np[i % 20] for i in range(total)])
    stamps, logs_seen = [], []
    class Timer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            stamps.append(time.perf_counter())
            if batch == 0 or batch == total - 1: logs_seen.append(dict(logs or {}))
    try:
        model.compile(optimizer=opt, jit_compile=True)
        t0 = time.perf_counter()
        model.fit(xs, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[Timer()])
        if len(stamps) != total:
            raise RuntimeError(f"fit ran {len(stamps)} batches, expected {total}")
        rec["first_step_s"] = round(stamps[0] - t0, 2)
        rates = [STEPS / (stamps[STEPS * (2 + r)] - stamps[STEPS * (1 + r)]) for r in range(REPEATS)]
        rec["steps_per_s"] = round(statistics.median(rates), 2)
        rec["steps_per_s_all"] = [round(r, 2) for r in rates]
        rec["nll_first_and_epoch_mean"] = [round(float(logs_seen[0]["nll"]), 3), round(float(logs_seen[-1]["nll"]), 3)]
        if "nfe" in logs_seen[-1]:
            rec["nfe_train_forward_epoch_mean"] = round(float(logs_seen[-1]["nfe"]), 1)
    except Exception as e:
        import traceback; traceback.print_exc()
        err = f"fit: {type(e).__name__}: {str(e)[:400]}"
if err: rec["error"] = err
report(rec)
