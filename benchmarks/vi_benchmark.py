"""VI training speed: ReverseKL `fit` and `tfp.vi` on a live FlowModel vs stock TFP.

Target: Neal's funnel in 10-D (v ~ N(0, 3^2), x_i | v ~ N(0, e^v)). Flow: 4 affine
couplings (MLP 64x2, exp scale) alternating with reversals, standard-normal base,
float32, 256 reparameterised samples per step, Adam 1e-3. Cases:

* `fit`: `FlowModel(objective=tff.objectives.ReverseKL(target, num_samples=256))`,
  `compile(jit_compile=True[, steps_per_execution])`, `fit(epochs=...,
  steps_per_epoch=...)` (Keras' loop).
* `tfp_vi`: `tfp.vi.fit_surrogate_posterior(target, model.distribution, Adam, steps,
  jit_compile=True)` on the same (live) model.
* `stock`: the FlowJAX-style reference loop in stock TFP: `tfb.RealNVP` couplings whose
  `shift_and_log_scale_fn` is the same MLP written with plain `tf.Variable`s, in a
  `tfd.TransformedDistribution`, trained by a `tf.function(jit_compile=True)` step
  (GradientTape over `mean(log q(x) - log p(x))`, `x = q.sample(256)`).

Reported: steps/s (median of `--repeats` timed blocks of `--steps` steps after a warm-up
block that includes tracing and compilation; `tfp_vi` compiles on every call, so its
rate includes compilation), the first block's seconds, ours/stock. Keras `fit` runs one
step per call by default; with `steps_per_execution=steps` a data-free objective's block
of steps runs as one `tf.while_loop` in one XLA computation (`FlowModel.make_train_function`),
as the stock loop does.
NeuTra's ESS per second and per gradient against plain NUTS are measured by
`examples/neutra_logistic_regression.py` (same harness functions as its table).

Usage: python benchmarks/vi_benchmark.py [--steps 200] [--repeats 5]
"""

import argparse
import math
import time

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_flows as tff
import _harness

tfb = tfp.bijectors
tfd = tfp.distributions

DIMS, BATCH, HIDDEN, LAYERS = 10, 256, 64, 4


def funnel_log_prob(x):
  v = x[..., 0]
  scale = tf.exp(v / 2)[..., tf.newaxis]
  return (tfd.Normal(0.0, 3.0).log_prob(v) +
          tf.reduce_sum(tfd.Normal(0.0, scale).log_prob(x[..., 1:]), axis=-1))


def _ours():
  keras.utils.set_random_seed(0)
  layers = []
  for _ in range(LAYERS):
    # The reversal alternates the halves, as stock's tfb.Permute does below.
    layers += [tff.layers.AffineCoupling(hidden_units=(HIDDEN, HIDDEN), scale="exp"),
               tff.layers.Permute()]
  return tff.FlowModel(layers, [DIMS], objective=tff.objectives.ReverseKL(
      funnel_log_prob, num_samples=BATCH))


class _StockMLP(tf.Module):
  """x -> (shift, log_scale) with plain tf.Variables; the last layer starts at zero."""

  def __init__(self, inputs, outputs, rng):
    super().__init__()
    sizes = [inputs, HIDDEN, HIDDEN]
    self.kernels = [tf.Variable(rng.normal(size=[a, b]).astype("float32") / math.sqrt(a))
                    for a, b in zip(sizes[:-1], sizes[1:])]
    self.biases = [tf.Variable(tf.zeros([b])) for b in sizes[1:]]
    self.out_kernel = tf.Variable(tf.zeros([HIDDEN, 2 * outputs]))
    self.out_bias = tf.Variable(tf.zeros([2 * outputs]))

  def __call__(self, x, output_units):
    for kernel, bias in zip(self.kernels, self.biases):
      x = tf.nn.relu(tf.matmul(x, kernel) + bias)
    shift, log_scale = tf.split(tf.matmul(x, self.out_kernel) + self.out_bias, 2, -1)
    return shift, 2.0 * tf.tanh(log_scale / 2.0)


def _stock():
  rng = np.random.default_rng(0)
  bijectors = []
  for _ in range(LAYERS):
    masked = DIMS // 2
    bijectors += [tfb.RealNVP(num_masked=masked, shift_and_log_scale_fn=_StockMLP(
        masked, DIMS - masked, rng)), tfb.Permute(list(reversed(range(DIMS))))]
  return tfd.TransformedDistribution(tfd.Sample(tfd.Normal(0.0, 1.0), [DIMS]),
                                     tfb.Chain(bijectors[::-1]))


def _time_blocks(run_block, repeats):
  start = time.perf_counter()
  run_block()
  first = time.perf_counter() - start
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    run_block()
    seconds.append(time.perf_counter() - start)
  return first, seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  results = {}

  for steps_per_execution in (1, args.steps):
    model = _ours()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True,
                  steps_per_execution=steps_per_execution)
    results[f"fit (steps_per_execution={steps_per_execution})"] = _time_blocks(
        lambda: model.fit(epochs=1, steps_per_epoch=args.steps, verbose=0), args.repeats)

  # tfp.vi traces and compiles its loop on every call: its rate includes compilation.
  model = _ours()
  distribution, optimizer = model.distribution, tf.optimizers.Adam(1e-3)
  start = time.perf_counter()
  _harness.sync(tfp.vi.fit_surrogate_posterior(
      funnel_log_prob, distribution, optimizer, (1 + args.repeats) * args.steps,
      sample_size=BATCH, jit_compile=True))
  total = time.perf_counter() - start
  results["tfp_vi (rate incl. compile)"] = (total, [total / (1 + args.repeats)])

  stock = _stock()
  variables = stock.trainable_variables
  stock_optimizer = tf.optimizers.Adam(1e-3)
  stock_optimizer.build(variables)

  @tf.function(jit_compile=True)
  def stock_block(seed):
    def body(i, loss):
      with tf.GradientTape() as tape:
        x = stock.sample(BATCH, seed=tf.stack([seed, i]))
        loss = tf.reduce_mean(stock.log_prob(x) - funnel_log_prob(x))
      stock_optimizer.apply(tape.gradient(loss, variables), variables)
      return i + 1, loss
    return tf.while_loop(lambda i, _: i < args.steps, body, (0, 0.0))[1]

  results["stock"] = _time_blocks(lambda: _harness.sync(stock_block(1)), args.repeats)

  print("| case | first block s (incl. compile) | steps/s (median) | vs stock |")
  print("|---|---|---|---|")
  stock_rate = args.steps / _harness.median(results["stock"][1])
  for name, (first, seconds) in results.items():
    rate = args.steps / _harness.median(seconds)
    print(f"| {name} | {first:.1f} | {rate:.1f} | {rate / stock_rate:.2f}x |")


if __name__ == "__main__":
  main()
