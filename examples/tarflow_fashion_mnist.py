"""TarFlow on Fashion-MNIST: test bits/dim next to Glow and a per-pixel histogram; samples, loss.

The protocol of `examples/glow_fashion_mnist.py` (the README's Fashion-MNIST table): full
Fashion-MNIST (28x28x1, 8-bit, 60,000 train / 10,000 test, read offline from Debian's
`dataset-fashion-mnist`), batch 64, Adam 1e-3 with cosine decay, 3,000 steps, float32
under XLA, a fixed batch order and dequantisation noise (seed 0). Test bits/dim average 8
seeded dequantisation draws over the 10,000 test images.

The default TarFlow has about as many weights as that Glow run (76,188): patches 2x2 (196
tokens of 4 pixels), 4 blocks of 1 Transformer layer, width 32, 4 heads, MLP expansion 4,
77,984 weights. Pixels go through the same logit map as Glow's best run (`logit_alpha`
0.05), and training adds no Gaussian noise (`--noise_std 0`): the noise smooths the
learned density, which helps denoised samples but costs likelihood on clean pixels (see
`examples/tarflow_digits.py`). With `--noise_std > 0` the sample grid is denoised.

Writes `results.json` (test and histogram bits/dim, weights, wall time, median step
time, loss-curve checks), `samples.png` (8x8 grid, temperature 1) and `loss.png`.

Run: python examples/tarflow_fashion_mnist.py [--output_dir runs/tarflow_fashion_mnist]
     [--steps 3000] [--patch_size 2] [--channels 32] [--num_blocks 4]
"""

import argparse
import json
import os
import statistics
import time

import keras
import matplotlib
import numpy as np
import tensorflow as tf

import tfp_flows as tff

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

GLOW_BITS_PER_DIM = 3.772  # examples/glow_fashion_mnist.py, default flags (RESULTS.md)


class _StepLosses(keras.callbacks.Callback):
  """Every training step's bits/dim (from the running epoch means Keras logs) and wall time."""

  def __init__(self):
    super().__init__()
    self.losses, self.times = [], []
    self._mean, self._count, self._start = 0.0, 0, None

  def on_epoch_begin(self, epoch, logs=None):
    self._mean, self._count = 0.0, 0

  def on_train_batch_begin(self, batch, logs=None):
    self._start = time.perf_counter()

  def on_train_batch_end(self, batch, logs=None):
    mean = float(logs["bits_per_dim"])
    self.times.append(time.perf_counter() - self._start)
    self._count += 1
    self.losses.append(self._count * mean - (self._count - 1) * self._mean)
    self._mean = mean


def _logit_alpha(value):
  return None if value.lower() == "none" else float(value)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--output_dir", default="runs/tarflow_fashion_mnist")
  parser.add_argument("--steps", type=int, default=3000)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--learning_rate", type=float, default=1e-3)
  parser.add_argument("--patch_size", type=int, default=2)
  parser.add_argument("--channels", type=int, default=32)
  parser.add_argument("--num_blocks", type=int, default=4)
  parser.add_argument("--layers_per_block", type=int, default=1)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--expansion", type=int, default=4)
  parser.add_argument("--noise_std", type=float, default=0.0)
  parser.add_argument("--logit_alpha", type=_logit_alpha, default=0.05,
                      help="logit margin, or 'none' for TarFlow's linear pixel scaling")
  parser.add_argument("--eval_draws", type=int, default=8)
  parser.add_argument("--eval_batch_size", type=int, default=250,
                      help="test rows per log_prob call (attention memory grows with it)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  (x_train, _), (x_test, _) = tff.data.load_fashion_mnist()
  keras.utils.set_random_seed(args.seed)
  model = tff.models.TarFlow(
      [28, 28, 1], patch_size=args.patch_size, channels=args.channels,
      num_blocks=args.num_blocks, layers_per_block=args.layers_per_block, heads=args.heads,
      expansion=args.expansion, noise_std=args.noise_std, num_bits=8,
      logit_alpha=args.logit_alpha)
  schedule = keras.optimizers.schedules.CosineDecay(args.learning_rate,
                                                    decay_steps=args.steps)
  model.compile(optimizer=keras.optimizers.Adam(schedule), jit_compile=True)
  steps_per_epoch = min(100, args.steps)
  data = (tf.data.Dataset.from_tensor_slices(x_train)
          .shuffle(len(x_train), seed=args.seed, reshuffle_each_iteration=True)
          .repeat().batch(args.batch_size, drop_remainder=True).prefetch(2))
  recorder = _StepLosses()
  start = time.time()
  model.fit(data, epochs=args.steps // steps_per_epoch, steps_per_epoch=steps_per_epoch,
            callbacks=[recorder], verbose=2)
  train_seconds = time.time() - start

  start = time.time()
  test_bpd = tff.data.dequantized_bits_per_dim(model, x_test, num_draws=args.eval_draws,
                                               batch_size=args.eval_batch_size)
  eval_seconds = time.time() - start
  histogram_bpd = tff.data.independent_pixel_bits_per_dim(x_train, x_test, 256)
  start = time.time()
  samples = model.sample(64, seed=1, denoise=args.noise_std > 0).numpy()
  sample_seconds = time.time() - start
  losses = np.array(recorder.losses)
  running = np.array([losses[max(0, i - 100):i].mean() if i else losses[0]
                      for i in range(len(losses))])
  spikes = int(np.sum(losses[100:] > 3.0 * running[100:]))
  results = {
      "test_bits_per_dim": test_bpd, "glow_bits_per_dim": GLOW_BITS_PER_DIM,
      "histogram_bits_per_dim": histogram_bpd,
      "parameters": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
      "train_seconds": train_seconds,
      "first_step_seconds": recorder.times[0],
      "median_step_seconds": statistics.median(recorder.times[1:] or recorder.times),
      "eval_seconds": eval_seconds, "sample_64_seconds": sample_seconds,
      "finite_loss": bool(np.all(np.isfinite(losses))),
      "max_step_loss_after_100": float(np.max(losses[100:])) if len(losses) > 100 else None,
      "steps_above_3x_running_mean": spikes,
      "samples_finite": bool(np.all(np.isfinite(samples))),
      "args": vars(args)}
  print(json.dumps(results, indent=2))

  os.makedirs(args.output_dir, exist_ok=True)
  with open(os.path.join(args.output_dir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  grid = samples.reshape(8, 8, 28, 28).transpose(0, 2, 1, 3).reshape(8 * 28, 8 * 28)
  plt.imsave(os.path.join(args.output_dir, "samples.png"), grid, cmap="gray",
             vmin=0, vmax=255)
  fig, axis = plt.subplots(figsize=(7, 4))
  axis.plot(losses, lw=0.5, label="per step")
  axis.plot(running, lw=1.5, label="running mean (100 steps)")
  axis.axhline(histogram_bpd, color="k", ls="--", label="per-pixel histogram (test)")
  axis.axhline(GLOW_BITS_PER_DIM, color="C2", ls=":", label="Glow, same protocol (test)")
  axis.set_ylim(min(3.0, losses.min()), max(8.0, np.percentile(losses, 1) + 1))
  axis.set_xlabel("step")
  axis.set_ylabel("training bits/dim")
  axis.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(args.output_dir, "loss.png"), dpi=100)


if __name__ == "__main__":
  main()
