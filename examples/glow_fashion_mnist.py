"""Glow on Fashion-MNIST: test bits/dim next to a per-pixel histogram; samples and loss curve.

The protocol of the README's Fashion-MNIST table: full Fashion-MNIST (28x28x1, 8-bit,
60,000 train / 10,000 test, read offline from Debian's `dataset-fashion-mnist`), Glow with
2 scales x 4 steps and hidden width 64, batch 64, Adam 1e-3 with cosine decay, 3,000
steps, float32 under XLA, a fixed batch order and dequantisation noise (seed 0). Test
bits/dim average 8 seeded dequantisation draws over the 10,000 test images.

The shared training, evaluation and outputs are in `examples/fashion_mnist_protocol.py`.

Run: python examples/glow_fashion_mnist.py [--output_dir runs/glow_fashion_mnist]
     [--steps 3000] [--scale exp | sigmoid] [--logit_alpha 0.05 | none]
"""

import argparse

import keras

import fashion_mnist_protocol
import tfp_flows as tff


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  fashion_mnist_protocol.add_arguments(parser, "runs/glow_fashion_mnist", "Glow")
  parser.add_argument("--warmup_steps", type=int, default=0)
  parser.add_argument("--clipnorm", type=float, default=None,
                      help="global gradient-norm clipping (Keras' global_clipnorm)")
  parser.add_argument("--scale", default="exp", choices=["sigmoid", "exp"])
  parser.add_argument("--clamp", type=float, default=2.0)
  parser.add_argument("--num_scales", type=int, default=2)
  parser.add_argument("--steps_per_scale", type=int, default=4)
  parser.add_argument("--hidden_channels", type=int, default=64)
  args = parser.parse_args()

  x_train, x_test = fashion_mnist_protocol.load()
  keras.utils.set_random_seed(args.seed)
  model = tff.models.Glow(
      [28, 28, 1], num_scales=args.num_scales, steps_per_scale=args.steps_per_scale,
      hidden_channels=args.hidden_channels, num_bits=8, logit_alpha=args.logit_alpha,
      scale=args.scale, clamp=args.clamp)
  schedule = keras.optimizers.schedules.CosineDecay(
      0.0 if args.warmup_steps else args.learning_rate,
      decay_steps=args.steps - args.warmup_steps,
      warmup_target=args.learning_rate if args.warmup_steps else None,
      warmup_steps=args.warmup_steps)
  model.compile(optimizer=keras.optimizers.Adam(schedule, global_clipnorm=args.clipnorm),
                jit_compile=True)
  fashion_mnist_protocol.run(model, args, x_train, x_test)


if __name__ == "__main__":
  main()
