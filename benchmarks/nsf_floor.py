"""How fast could an NSF coupling step be with a free spline? The step without it.

Times, round-robin in one process, two XLA train steps of batch 256 with Keras' Adam:

* the NSF preset's step (`NeuralSplineFlow(..., linear="permute")`, as in the peer
  comparison's own step);
* the same conditioner MLPs (Keras `Dense`, 128 x 2, half the dimensions in,
  `half x (3K - 1)` parameters out) chained as the couplings chain them, with the
  spline replaced by a mean over the parameters added to the other half: the matmuls,
  their gradients and Adam of the real step, and next to nothing else.

The second is a floor for what any spline kernel can reach with these conditioners on
this machine. A speed target above the floor (RESULTS.md, issue 17) cannot be met by
the spline alone. A third step, the same MLPs' value and gradient without Adam's
update, splits the floor into the matmuls and the optimizer.

Usage: python benchmarks/nsf_floor.py [--dims=64] [--layers=8] [--rounds=9]
"""

from absl import app
from absl import flags

import _harness

_DIMS = flags.DEFINE_integer("dims", 64, "Event size D of the NSF preset.")
_LAYERS = flags.DEFINE_integer("layers", 8, "Coupling layers.")
_ROUNDS = flags.DEFINE_integer("rounds", 9, "Round-robin rounds.")

BATCH = 256


def _floor_step(dims, layers, update=True):
  """The XLA train step of the conditioner MLPs alone, chained like the couplings.

  With `update=False` the step returns the gradients instead of applying them.
  """
  import keras  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  half = dims // 2
  params = 3 * _harness.NSF_NUM_BINS - 1
  nets = []
  for _ in range(layers):
    net = keras.Sequential([keras.layers.Dense(_harness.NSF_HIDDEN, activation="relu"),
                            keras.layers.Dense(_harness.NSF_HIDDEN, activation="relu"),
                            keras.layers.Dense((dims - half) * params)])
    net.build((None, half))
    nets.append(net)
  variables = [v for net in nets for v in net.trainable_variables]
  optimizer = keras.optimizers.Adam(1e-3)
  optimizer.build(variables)

  @tf.function(jit_compile=True)
  def step(x):
    with tf.GradientTape() as tape:
      kept, changed = x[:, :half], x[:, half:]
      loss = 0.0
      for net in nets:
        out = tf.reshape(net(kept), [-1, dims - half, params])
        kept, changed = changed + tf.reduce_mean(out, -1), kept
        loss += tf.reduce_mean(kept * kept)
    gradients = tape.gradient(loss, variables)
    if not update:
      return loss, gradients
    optimizer.apply(gradients, variables)
    return loss

  return step


def main(argv):
  del argv
  import keras  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  dims, layers = _DIMS.value, _LAYERS.value
  if dims < 2 or layers < 1:
    raise app.UsageError(f"--dims must be >= 2 and --layers >= 1; got {dims}, {layers}.")
  model = _harness.nsf_coupling_preset(dims, layers)
  steps = {
      "NSF preset step": _harness.keras_train_step(
          model, keras.optimizers.Adam(1e-3), model.trainable_variables, xla=True),
      "MLPs and Adam, no spline": _floor_step(dims, layers),
      "MLPs' gradient, no Adam": _floor_step(dims, layers, update=False),
  }
  x = tf.constant(np.random.default_rng(0).normal(size=(BATCH, dims)), tf.float32)
  calls = {}
  for name, step in steps.items():
    _harness.sync(step(x))
    calls[name] = _harness.calls_for_duration(step, [(x,)], 1.0)
  rates = {name: [] for name in steps}
  for _ in range(_ROUNDS.value):
    for name, step in steps.items():
      rates[name] += _harness.timed_calls(step, [(x,)], 1, calls[name], 1)
  print(f"NSF D={dims}, {layers} layers, batch {BATCH}; {_ROUNDS.value} rounds round-robin")
  print(f"{'step':28s} {'steps/s':>9s} {'ms/step':>9s}")
  for name, values in rates.items():
    rate = _harness.median(values)
    print(f"{name:28s} {rate:9.1f} {1e3 / rate:9.2f}")


if __name__ == "__main__":
  app.run(main)
