"""Where does a Glow 8x8x1 training step spend its time? (companion of glow_benchmark.py)

Times, round-robin in one process (so background load hits every variant alike), the
train step of the benchmark's Glow case split into parts and with parts removed:

* forward only (loss), forward + gradient, full step, optimizer update only;
* ours with each coupling's conditioner evaluated once (the layer computes inverse and
  log-det in one `Coupling._apply` call; a monkeypatch here, not in the package);
* ours without the invertible 1x1 convolutions, without ActNorm, and with ActNorm but no
  data-dependent-initialisation ops in the step;
* stock `tfb.Glow` split the same way;
* a hand-written pure-TF Glow of the same sizes (same math: logit preprocessing, ActNorm,
  LU 1x1 conv, sigmoid affine coupling with the same conv nets): a floor for what the
  bijector/Keras machinery costs.

Also prints op counts of the traced train-step graphs (how many Conv2D ops each builds).

Usage: python benchmarks/glow_profile.py [--xla] [--rounds=7] [--calls=10]
"""

import contextlib
import math
import time

from absl import app
from absl import flags

import _harness

_XLA = flags.DEFINE_boolean("xla", False, "jit_compile every timed function.")
_ROUNDS = flags.DEFINE_integer("rounds", 7, "Round-robin rounds.")
_CALLS = flags.DEFINE_integer("calls", 10, "Calls per variant per round.")
_ONLY = flags.DEFINE_list("only", None, "Only these variants (names as printed).")

BATCH = 256
HIDDEN = 64
STEPS = 8
NUM_BITS = 5
ALPHA = 0.05


def main(argv):
  del argv
  import keras  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import tensorflow_probability as tfp  # pylint: disable=import-outside-toplevel
  import tf_keras  # pylint: disable=import-outside-toplevel

  import tfp_flows as tff  # pylint: disable=import-outside-toplevel
  from tfp_flows import data  # pylint: disable=import-outside-toplevel
  from tfp_flows.bijectors import conditioning  # pylint: disable=import-outside-toplevel
  from tfp_flows.bijectors import preprocessing  # pylint: disable=import-outside-toplevel
  from tfp_flows.layers import coupling as coupling_layers  # pylint: disable=import-outside-toplevel

  tfb, tfd = tfp.bijectors, tfp.distributions
  xla = _XLA.value
  keras.utils.set_random_seed(0)
  (x_train, _), _ = data.load_digits_images(seed=0)
  rng = np.random.default_rng(0)
  batches = [tf.constant(x_train[rng.integers(0, len(x_train), BATCH)]) for _ in range(4)]

  # ------------------------------------------------------------------ our variants
  L = tff.layers

  def ours_model(kind):
    if kind in ("full", "once"):
      return tff.models.Glow([8, 8, 1], num_scales=1, steps_per_scale=STEPS,
                             hidden_channels=HIDDEN, num_bits=NUM_BITS)
    flow_layers = [L.Dequantize(num_bits=NUM_BITS), L.Squeeze(2)]
    for i in range(STEPS):
      if kind != "no_actnorm":
        flow_layers.append(L.ActNorm(data_init=kind != "no_init"))
      if kind != "no_1x1":
        flow_layers.append(L.InvertibleConv1x1(seed=i))
      flow_layers.append(L.AffineCoupling(hidden_channels=HIDDEN))
    flow_layers.append(L.GaussianPrior())
    return tff.FlowModel(flow_layers, event_shape=[8, 8, 1])

  original_call = coupling_layers.Coupling.call

  def single_pass_call(self, inputs, context=None, training=None):
    bijector = self.bijector
    kwargs = conditioning.conditional_kwargs(bijector, context if self.conditional else None)
    z, ildj = bijector._apply(inputs, kwargs.get("conditional_input"), "inverse")  # pylint: disable=protected-access
    return z, ildj + tf.zeros(tf.shape(inputs)[:1], inputs.dtype)

  @contextlib.contextmanager
  def patched(enabled):
    if enabled:
      coupling_layers.Coupling.call = single_pass_call
    try:
      yield
    finally:
      coupling_layers.Coupling.call = original_call

  variants = {}  # name -> (fn, args, patch)

  def add_ours(name, kind):
    model = ours_model(kind)
    variables = model.trainable_variables
    opt = keras.optimizers.Adam(1e-3)
    step = _harness.keras_train_step(model, opt, variables, xla)

    variants[name] = (step, True, kind == "once", len(variables))
    return model, variables, opt

  model, variables, opt = add_ours("ours step", "full")

  @tf.function(jit_compile=xla)
  def ours_forward(x):
    return -tf.reduce_mean(model(x, training=True))

  @tf.function(jit_compile=xla)
  def ours_grad(x):
    with tf.GradientTape() as tape:
      loss = -tf.reduce_mean(model(x, training=True))
    return tape.gradient(loss, variables)

  const_grads = [tf.zeros_like(v) for v in variables]

  @tf.function(jit_compile=xla)
  def ours_opt():
    opt.apply(const_grads, variables)
    return tf.constant(0.0)

  variants["ours forward"] = (ours_forward, True, False, None)
  variants["ours fwd+grad"] = (ours_grad, True, False, None)
  variants["ours Adam only"] = (ours_opt, False, False, None)
  add_ours("ours conditioner once", "once")
  add_ours("ours no 1x1 conv", "no_1x1")
  add_ours("ours no ActNorm", "no_actnorm")
  add_ours("ours ActNorm no init", "no_init")

  # ------------------------------------------------------------------ stock
  glow = tfb.Glow(output_shape=(8, 8, 1), num_glow_blocks=1, num_steps_per_block=STEPS,
                  coupling_bijector_fn=lambda s: tfb.GlowDefaultNetwork(s, num_hidden=HIDDEN),
                  exit_bijector_fn=tfb.GlowDefaultExitNetwork, seed=0)
  dequantize = tfb.Chain([tfb.Scale(float(2 ** NUM_BITS)), preprocessing.Logit(ALPHA)])
  dist = tfd.TransformedDistribution(tfd.Sample(tfd.Normal(0.0, 1.0), 64),
                                     tfb.Chain([dequantize, glow]))
  svars = dist.trainable_variables
  sopt = tf_keras.optimizers.Adam(1e-3)
  sopt.build(svars)
  gen = tf.random.Generator.from_seed(0)

  def stock_loss(x):
    return -tf.reduce_mean(dist.log_prob(x + gen.uniform(tf.shape(x))))

  @tf.function(jit_compile=xla)
  def stock_step(x):
    with tf.GradientTape() as tape:
      loss = stock_loss(x)
    sopt.apply_gradients(zip(tape.gradient(loss, svars), svars))
    return loss

  @tf.function(jit_compile=xla)
  def stock_forward(x):
    return stock_loss(x)

  @tf.function(jit_compile=xla)
  def stock_grad(x):
    with tf.GradientTape() as tape:
      loss = stock_loss(x)
    return tape.gradient(loss, svars)

  sconst = [tf.zeros_like(v) for v in svars]

  @tf.function(jit_compile=xla)
  def stock_opt():
    sopt.apply_gradients(zip(sconst, svars))
    return tf.constant(0.0)

  variants["stock step"] = (stock_step, True, False, len(svars))
  variants["stock forward"] = (stock_forward, True, False, None)
  variants["stock fwd+grad"] = (stock_grad, True, False, None)
  variants["stock Adam only"] = (stock_opt, False, False, None)

  # ------------------------------------------------------------------ hand-written
  hw_vars = []
  hw_steps = []
  import scipy.linalg  # pylint: disable=import-outside-toplevel
  for i in range(STEPS):
    rot = np.linalg.qr(np.random.default_rng(i).normal(size=(4, 4)))[0]
    p, lo, up = scipy.linalg.lu(rot)
    d = np.diag(up)
    he = lambda shape: tf.Variable(np.random.default_rng(i).normal(
        scale=math.sqrt(2.0 / np.prod(shape[:-1])), size=shape).astype("float32"))
    s = {
        "loc": tf.Variable(tf.zeros([4])), "log_scale": tf.Variable(tf.zeros([4])),
        "lower": tf.Variable(np.tril(lo, -1).astype("float32")),
        "upper": tf.Variable(np.triu(up, 1).astype("float32")),
        "log_diag": tf.Variable(np.log(np.abs(d)).astype("float32")),
        "w1": he((3, 3, 2, HIDDEN)), "b1": tf.Variable(tf.zeros([HIDDEN])),
        "w2": he((1, 1, HIDDEN, HIDDEN)), "b2": tf.Variable(tf.zeros([HIDDEN])),
        "w3": tf.Variable(tf.zeros([3, 3, HIDDEN, 4])), "b3": tf.Variable(tf.zeros([4])),
    }
    s["perm_t"] = tf.constant(p.T.astype("float32"))  # rows of P^T
    s["sign"] = tf.constant(np.sign(d).astype("float32"))
    hw_steps.append(s)
    hw_vars += [s[k] for k in ("loc", "log_scale", "lower", "upper", "log_diag",
                               "w1", "b1", "w2", "b2", "w3", "b3")]
  hw_opt = tf_keras.optimizers.Adam(1e-3)
  hw_opt.build(hw_vars)
  hw_gen = tf.random.Generator.from_seed(1)
  log_sig2 = math.log(1.0 / (1.0 + math.exp(-2.0)))

  def hw_log_prob(x):
    v = x + hw_gen.uniform(tf.shape(x))
    pr = ALPHA + (1 - 2 * ALPHA) * v / 2 ** NUM_BITS
    z = tf.math.log(pr) - tf.math.log1p(-pr)
    ldj = tf.reduce_sum(math.log((1 - 2 * ALPHA) / 2 ** NUM_BITS) - tf.math.log(pr)
                        - tf.math.log1p(-pr), [1, 2, 3])
    z = tf.nn.space_to_depth(z, 2)  # [N, 4, 4, 4]
    hw = 16.0
    for s in hw_steps:
      z = (z - s["loc"]) * tf.exp(-s["log_scale"])
      ldj -= hw * tf.reduce_sum(s["log_scale"])
      lower = tf.linalg.set_diag(tf.linalg.band_part(s["lower"], -1, 0), tf.ones([4]))
      upper = tf.linalg.set_diag(tf.linalg.band_part(s["upper"], 0, -1),
                                 s["sign"] * tf.exp(s["log_diag"]))
      # W = P L U; W^{-1} = U^{-1} L^{-1} P^T
      inv = tf.linalg.triangular_solve(
          upper, tf.linalg.triangular_solve(lower, s["perm_t"], lower=True), lower=False)
      z = tf.tensordot(z, inv, [[3], [1]])
      ldj -= hw * tf.reduce_sum(s["log_diag"])
      za, zb = z[..., :2], z[..., 2:]
      h = tf.nn.relu(tf.nn.conv2d(za, s["w1"], 1, "SAME") + s["b1"])
      h = tf.nn.relu(tf.nn.conv2d(h, s["w2"], 1, "SAME") + s["b2"])
      h = tf.nn.conv2d(h, s["w3"], 1, "SAME") + s["b3"]
      h = tf.reshape(h, [-1, 4, 4, 2, 2])
      log_s = tf.math.log_sigmoid(h[..., 0] + 2.0) - log_sig2
      zb = (zb - h[..., 1]) * tf.exp(-log_s)
      ldj -= tf.reduce_sum(log_s, [1, 2, 3])
      z = tf.concat([za, zb], -1)
    base = -0.5 * tf.reduce_sum(tf.square(z), [1, 2, 3]) - 32.0 * math.log(2 * math.pi)
    return base + ldj

  @tf.function(jit_compile=xla)
  def hw_step(x):
    with tf.GradientTape() as tape:
      loss = -tf.reduce_mean(hw_log_prob(x))
    hw_opt.apply_gradients(zip(tape.gradient(loss, hw_vars), hw_vars))
    return loss

  @tf.function(jit_compile=xla)
  def hw_grad(x):
    with tf.GradientTape() as tape:
      loss = -tf.reduce_mean(hw_log_prob(x))
    return tape.gradient(loss, hw_vars)

  variants["hand-written TF step"] = (hw_step, True, False, len(hw_vars))
  variants["hand-written fwd+grad"] = (hw_grad, True, False, None)

  # ------------------------------------------------------------------ op counts
  def op_counts(fn, *args):
    graph = fn.get_concrete_function(*args).graph
    ops = graph.get_operations()
    types = {}
    for op in ops:
      types[op.type] = types.get(op.type, 0) + 1
    return len(ops), types

  print(f"XLA {'on' if xla else 'off'}; batch {BATCH}; {_ROUNDS.value} rounds x "
        f"{_CALLS.value} calls per variant, round-robin.\n")
  with patched(False):
    n_ours, t_ours = op_counts(variants["ours step"][0], batches[0])
  with patched(True):
    n_once, t_once = op_counts(variants["ours conditioner once"][0], batches[0])
  n_stock, t_stock = op_counts(stock_step, batches[0])
  n_hw, t_hw = op_counts(hw_step, batches[0])
  conv = ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter")
  print("traced train-step graph (before grappler): total ops; Conv2D / BackpropInput / "
        "BackpropFilter")
  for name, n, t in (("ours", n_ours, t_ours), ("ours conditioner once", n_once, t_once),
                     ("stock", n_stock, t_stock), ("hand-written", n_hw, t_hw)):
    print(f"  {name:24s} {n:6d} ops; " + " / ".join(str(t.get(c, 0)) for c in conv))
  print()

  # ------------------------------------------------------------------ timing
  names = [n for n in variants if not _ONLY.value or n in _ONLY.value]
  for name in names:  # trace + compile + warm up, under the right patch
    fn, takes_x, patch, _ = variants[name]
    with patched(patch):
      start = time.perf_counter()
      for i in range(3):
        out = fn(batches[i % 4]) if takes_x else fn()
      _harness.sync(out)
      print(f"  warm-up {name:26s} {time.perf_counter() - start:6.1f}s", flush=True)
  times = {n: [] for n in names}
  for _ in range(_ROUNDS.value):
    for name in names:
      fn, takes_x, _, _ = variants[name]
      args_list = [(b,) for b in batches] if takes_x else [()]
      [calls_per_s] = _harness.timed_calls(fn, args_list, 1, _CALLS.value, 1)
      times[name].append(1e3 / calls_per_s)
  print(f"\n{'variant':28s} {'ms/call':>8s} {'(min)':>7s} {'calls/s':>8s} {'trainable vars':>15s}")
  for name in names:
    med = _harness.median(times[name])
    nvars = variants[name][3]
    print(f"{name:28s} {med:8.1f} {min(times[name]):7.1f} {1e3 / med:8.1f} "
          f"{'' if nvars is None else nvars:>15}")


if __name__ == "__main__":
  app.run(main)
