"""TarFlow on the 8x8 digits: held-out bits/dim next to Glow and a per-pixel histogram.

The protocol of the main job (`python -m tfp_flows train`, Glow): scikit-learn's 1,797
digits, the seeded 80/20 split of `tfp_flows.data.load_digits_images`, 17 grey levels in
a 5-bit pixel space, batch 64, Adam with cosine decay, float32 under XLA. Test bits/dim
average 8 seeded uniform-dequantisation draws, the same estimator as the Glow figure
(2.20 at the CLI's default flags) and the independent-pixel histogram (2.439), so the
three numbers are in the same discrete space.

TarFlow's Gaussian noise augmentation smooths the density it learns; it helps samples
(with `denoise=True`) but costs likelihood on clean pixels, so this script defaults to
`--noise_std 0` for the bits/dim comparison (the preset's own default is 0.05).

Also prints the median training step time, and samples/s of the three samplers (KV-cache
loop, Jacobi sweeps with the sweeps used per block, naive prefix recomputation), and
writes a sample grid.

Run: python examples/tarflow_digits.py [--epochs 60] [--patch_size 2] [--noise_std 0]
     [--output_dir runs/tarflow_digits]
"""

import argparse
import math
import os
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

import tfp_flows as tff
from tfp_flows import data

NUM_BITS = 5  # 17 grey levels need 5 bits
GLOW_BITS_PER_DIM = 2.20  # the main job's Glow preset at default flags (README)


class _StepTimes(keras.callbacks.Callback):
  """Wall time of every training step (the first includes tracing and XLA compilation)."""

  def __init__(self):
    super().__init__()
    self.times, self._start = [], None

  def on_train_batch_begin(self, batch, logs=None):
    self._start = time.perf_counter()

  def on_train_batch_end(self, batch, logs=None):
    self.times.append(time.perf_counter() - self._start)


def _logit_alpha(value):
  return None if value.lower() == "none" else float(value)


def _sampler_speed(model, sampling, n, seed=0):
  """Samples/s of `sampling` for every block (compiled once, timed on a second call)."""
  bijector = model.sampling_bijector(sampling=sampling)
  forward = tf.function(bijector.forward, jit_compile=True)
  z = model.base_distribution.sample(n, seed=tf.constant([0, seed]))
  forward(z)
  start = time.perf_counter()
  forward(z).numpy()
  return n / (time.perf_counter() - start)


def _jacobi_sweeps(model, n, seed=0):
  """Jacobi sweeps used by each block (base side first) on `n` samples."""
  z = model.base_distribution.sample(n, seed=tf.constant([0, seed]))
  sweeps = []
  for layer in reversed(model.flow_layers):
    if isinstance(layer, tff.layers.TarFlowBlock):
      result = layer.make_bijector(sampling="jacobi").forward_solve(z)
      assert bool(tf.reduce_all(result.converged)), "a Jacobi sample did not converge"
      sweeps.append(int(result.num_iterations))
      z = result.value
    else:
      z = layer.bijector.forward(z)
  return sweeps


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--epochs", type=int, default=60)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--learning_rate", type=float, default=1e-3)
  parser.add_argument("--patch_size", type=int, default=2)
  parser.add_argument("--channels", type=int, default=64)
  parser.add_argument("--num_blocks", type=int, default=4)
  parser.add_argument("--layers_per_block", type=int, default=2)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--noise_std", type=float, default=0.0)
  parser.add_argument("--logit_alpha", type=_logit_alpha, default=None,
                      help="logit margin, or 'none' for TarFlow's linear pixel scaling")
  parser.add_argument("--eval_draws", type=int, default=8)
  parser.add_argument("--output_dir", default="runs/tarflow_digits")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  keras.utils.set_random_seed(args.seed)
  (x_train, _), (x_test, _) = data.load_digits_images(seed=0)
  model = tff.models.TarFlow(
      [8, 8, 1], patch_size=args.patch_size, channels=args.channels,
      num_blocks=args.num_blocks, layers_per_block=args.layers_per_block, heads=args.heads,
      noise_std=args.noise_std, num_bits=NUM_BITS, logit_alpha=args.logit_alpha)
  steps = args.epochs * math.ceil(len(x_train) / args.batch_size)
  schedule = keras.optimizers.schedules.CosineDecay(args.learning_rate, decay_steps=steps,
                                                    alpha=0.05)
  model.compile(optimizer=keras.optimizers.Adam(schedule), jit_compile=True)
  times = _StepTimes()
  start = time.perf_counter()
  model.fit(x_train, epochs=args.epochs, batch_size=args.batch_size, verbose=0,
            shuffle=True, callbacks=[times])
  seconds = time.perf_counter() - start

  rows = [
      ("TarFlow", data.dequantized_bits_per_dim(model, x_test, num_draws=args.eval_draws)),
      ("Glow preset (README, default flags)", GLOW_BITS_PER_DIM),
      ("independent-pixel histogram",
       data.independent_pixel_bits_per_dim(x_train, x_test, 2 ** NUM_BITS)),
  ]
  print(f"\n{len(x_train)} training / {len(x_test)} test digits, 5-bit pixel space; "
        f"TarFlow {model.count_params():,} weights, {steps} steps in {seconds:.0f} s")
  print(f"first step (trace + XLA compile) {times.times[0]:.1f} s; median step after it "
        f"{1e3 * statistics.median(times.times[1:] or times.times):.1f} ms")
  print(f"{'model':40s} {'test bits/dim':>14s}")
  for name, bpd in rows:
    print(f"{name:40s} {bpd:14.3f}")

  n = 64
  print(f"\nsampling {n} digits (XLA, second call):")
  for sampling in ("kv_cache", "jacobi", "naive"):
    print(f"  {sampling:9s} {_sampler_speed(model, sampling, n):10.1f} samples/s")
  print(f"  Jacobi sweeps per block (base side first, +1 log-det pass each): "
        f"{_jacobi_sweeps(model, n)} for {model.flow_layers[-1].bijector.num_tokens} tokens")

  samples = model.sample(16, seed=args.seed, denoise=args.noise_std > 0).numpy()
  assert np.all(np.isfinite(samples))
  os.makedirs(args.output_dir, exist_ok=True)
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  figure, axes = plt.subplots(2, 8, figsize=(8, 2))
  for axis, image in zip(axes.ravel(), samples):
    axis.imshow(image[..., 0], cmap="gray_r", vmin=0, vmax=16)
    axis.axis("off")
  path = os.path.join(args.output_dir, "samples.png")
  figure.savefig(path, dpi=100, bbox_inches="tight")
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
