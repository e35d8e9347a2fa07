"""Fit a small Real NVP (affine couplings + ActNorm) to two moons; write a density plot.

Run: python examples/realnvp_two_moons.py [--output two_moons.png]
"""

import argparse

import keras
import matplotlib
import numpy as np
from sklearn import datasets

import tfp_flows as tff

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--output", default="two_moons.png")
  parser.add_argument("--epochs", type=int, default=40)
  args = parser.parse_args()

  keras.utils.set_random_seed(0)
  x, _ = datasets.make_moons(8192, noise=0.05, random_state=0)
  x = ((x - x.mean(0)) / x.std(0)).astype("float32")
  flow_layers = []
  for i in range(6):
    flow_layers += [tff.layers.ActNorm(),
                    tff.layers.AffineCoupling(scale="exp", reverse=i % 2 == 1,
                                              hidden_units=(64, 64))]
  model = tff.FlowModel(flow_layers, event_shape=[2])
  model.compile(optimizer=keras.optimizers.Adam(2e-3), jit_compile=True)
  model.fit(x, epochs=args.epochs, batch_size=256, verbose=2)

  grid = np.linspace(-2.5, 2.5, 200, dtype="float32")
  points = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2)
  density = np.exp(model.log_prob(points).numpy()).reshape(200, 200)
  samples = model.sample(2000, seed=1).numpy()
  fig, axes = plt.subplots(1, 3, figsize=(12, 4))
  axes[0].scatter(x[:2000, 0], x[:2000, 1], s=1)
  axes[0].set_title("data")
  axes[1].imshow(density, origin="lower", extent=[-2.5, 2.5, -2.5, 2.5])
  axes[1].set_title("learned density")
  axes[2].scatter(samples[:, 0], samples[:, 1], s=1, color="C1")
  axes[2].set_title("samples")
  for axis in axes:
    axis.set_xlim(-2.5, 2.5)
    axis.set_ylim(-2.5, 2.5)
  fig.savefig(args.output, dpi=80, bbox_inches="tight")
  print(f"wrote {args.output}; mean train NLL {-model.log_prob(x).numpy().mean():.3f} nats")


if __name__ == "__main__":
  main()
