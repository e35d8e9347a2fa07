"""The 8x8 digits as a 64-dimensional tabular density task for neural spline flows.

Each digit is a vector of 64 integer pixels in [0, 16]; `NeuralSplineFlow(64,
num_bits=5)` dequantises them uniformly (as the Glow preset does), so test bits/dim
are in the same discrete 5-bit pixel space as `python -m tfp_flows train` (Glow) and
comparable with a full-covariance Gaussian and the independent-pixel histogram fitted
to the same training split. With `--glow` the script also trains the Glow preset with
the command line's default settings, in the same run.

Run: python examples/spline_digits_64d.py [--autoregressive] [--glow]
"""

import argparse
import math
import time

import keras
import numpy as np

import tfp_flows as tff
from tfp_flows import data

NUM_BITS = 5  # 17 grey levels need 5 bits


def train(model, x_train, epochs, batch_size, learning_rate):
  steps = epochs * math.ceil(len(x_train) / batch_size)
  schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps,
                                                    alpha=0.05)
  model.compile(optimizer=keras.optimizers.Adam(schedule), jit_compile=True)
  start = time.time()
  model.fit(x_train, epochs=epochs, batch_size=batch_size, verbose=0, shuffle=True)
  return time.time() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--autoregressive", action="store_true")
  parser.add_argument("--epochs", type=int, default=60)
  parser.add_argument("--num_layers", type=int, default=5)
  parser.add_argument("--hidden", type=int, default=128)
  parser.add_argument("--glow", action="store_true", help="also train the Glow preset")
  args = parser.parse_args()

  keras.utils.set_random_seed(0)
  (images_train, _), (images_test, _) = data.load_digits_images(seed=0)
  x_train = images_train.reshape(len(images_train), 64)
  x_test = images_test.reshape(len(images_test), 64)
  rows = [("independent-pixel histogram",
           data.independent_pixel_bits_per_dim(x_train, x_test, 2 ** NUM_BITS), 0.0),
          ("full-covariance Gaussian", data.gaussian_bits_per_dim(x_train, x_test), 0.0)]

  model = tff.models.NeuralSplineFlow(
      64, num_layers=args.num_layers, num_bins=8, bound=3.0,
      hidden_units=(args.hidden, args.hidden), autoregressive=args.autoregressive,
      num_bits=NUM_BITS)
  seconds = train(model, x_train, args.epochs, 64, 1e-3)
  kind = "autoregressive" if args.autoregressive else "coupling"
  rows.append((f"NeuralSplineFlow ({kind}, {args.num_layers} layers)",
               data.dequantized_bits_per_dim(model, x_test), seconds))
  samples = model.sample(16, seed=0).numpy()
  assert np.all(np.isfinite(samples))

  if args.glow:
    glow = tff.models.Glow([8, 8, 1], num_scales=2, steps_per_scale=4, hidden_channels=64,
                           num_bits=NUM_BITS, logit_alpha=1e-3)
    seconds = train(glow, images_train, args.epochs, 64, 2e-3)
    rows.append(("Glow (2 scales x 4 steps)", data.dequantized_bits_per_dim(
        glow, images_test), seconds))

  print(f"\n{len(x_train)} training / {len(x_test)} test digits, 5-bit pixel space")
  print(f"{'model':42s} {'test bits/dim':>14s} {'test NLL nats':>14s} {'train s':>8s}")
  for name, bpd, seconds in rows:
    print(f"{name:42s} {bpd:14.3f} {bpd * 64 * math.log(2.0):14.1f} {seconds:8.0f}")


if __name__ == "__main__":
  main()
