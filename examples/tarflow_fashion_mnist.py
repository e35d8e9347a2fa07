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

Writes `results.json`, `samples.png` and `loss.png` through the protocol the Glow example
shares (`examples/fashion_mnist_protocol.py`).

Run: python examples/tarflow_fashion_mnist.py [--output_dir runs/tarflow_fashion_mnist]
     [--steps 3000] [--patch_size 2] [--channels 32] [--num_blocks 4]
"""

import argparse

import keras

import fashion_mnist_protocol
import tfp_flows as tff

GLOW_BITS_PER_DIM = 3.772  # examples/glow_fashion_mnist.py, default flags (RESULTS.md)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  fashion_mnist_protocol.add_arguments(parser, "runs/tarflow_fashion_mnist", "TarFlow")
  parser.add_argument("--patch_size", type=int, default=2)
  parser.add_argument("--channels", type=int, default=32)
  parser.add_argument("--num_blocks", type=int, default=4)
  parser.add_argument("--layers_per_block", type=int, default=1)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--expansion", type=int, default=4)
  parser.add_argument("--noise_std", type=float, default=0.0)
  parser.add_argument("--eval_batch_size", type=int, default=250,
                      help="test rows per log_prob call (attention memory grows with it)")
  args = parser.parse_args()

  x_train, x_test = fashion_mnist_protocol.load()
  keras.utils.set_random_seed(args.seed)
  model = tff.models.TarFlow(
      [28, 28, 1], patch_size=args.patch_size, channels=args.channels,
      num_blocks=args.num_blocks, layers_per_block=args.layers_per_block, heads=args.heads,
      expansion=args.expansion, noise_std=args.noise_std, num_bits=8,
      logit_alpha=args.logit_alpha)
  schedule = keras.optimizers.schedules.CosineDecay(args.learning_rate,
                                                    decay_steps=args.steps)
  model.compile(optimizer=keras.optimizers.Adam(schedule), jit_compile=True)
  fashion_mnist_protocol.run(model, args, x_train, x_test,
                             eval_batch_size=args.eval_batch_size,
                             sample_kwargs={"denoise": args.noise_std > 0},
                             references=[("glow", GLOW_BITS_PER_DIM)])


if __name__ == "__main__":
  main()
