"""What a stateless seed read from a variable costs inside a compiled step.

Every training-time random layer of tfp_flows (dequantisation, Hutchinson probes,
Russian-roulette counts, TarFlow's noise, ReverseKL's draws) takes its stateless seed
from a `keras.random.SeedGenerator`, whose state is an int64 `tf.Variable`. This times
200 iterations of an XLA-compiled `tf.while_loop` that draws a [256, 10] stateless
normal per iteration, with the seed

* `counter`: from the loop counter (no variable);
* `keras_generator`: drawn from a `keras.random.SeedGenerator` (what the layers do);
* `int32_variable` / `float32_variable`: read from a variable and advanced;
* `variable_read_unused`: a variable is read, but the seed is the counter.

Reported: microseconds per iteration (median of 5 repeats after a warm-up).
Results: benchmarks/RESULTS.md ("Peers, after the restructure").

Usage: python benchmarks/seed_draw_cost.py
"""

import statistics
import time

import keras
import tensorflow as tf

ITERATIONS = 200


def _loop(kind):
  generator = keras.random.SeedGenerator(0)
  int_state = tf.Variable([0, 0], dtype=tf.int32)
  float_state = tf.Variable([0.0, 0.0])

  def seed_and_extra(i):
    if kind == "counter":
      return tf.stack([i, i]), 0.0
    if kind == "keras_generator":
      return keras.random.randint([2], 0, 2**31 - 1, seed=generator, dtype="int32"), 0.0
    if kind == "int32_variable":
      seed = int_state.read_value()
      int_state.assign_add([0, 1])
      return seed, 0.0
    if kind == "float32_variable":
      seed = tf.cast(float_state.read_value(), tf.int32) + tf.stack([0, i])
      float_state.assign_add([0.0, 1.0])
      return seed, 0.0
    return tf.stack([i, i]), tf.cast(int_state.read_value()[0], tf.float32)

  @tf.function(jit_compile=True)
  def run():
    def body(i, total):
      seed, extra = seed_and_extra(i)
      return i + 1, total + extra + tf.reduce_sum(
          tf.random.stateless_normal([256, 10], seed=seed))
    return tf.while_loop(lambda i, _: i < ITERATIONS, body, (0, 0.0))[1]

  return run


def main():
  kinds = ("counter", "keras_generator", "int32_variable", "float32_variable",
           "variable_read_unused")
  loops = {kind: _loop(kind) for kind in kinds}
  for run in loops.values():
    run().numpy()
  times = {kind: [] for kind in kinds}
  for _ in range(5):
    for kind, run in loops.items():
      start = time.perf_counter()
      run().numpy()
      times[kind].append((time.perf_counter() - start) / ITERATIONS * 1e6)
  print("| seed | us per iteration |")
  print("|---|---|")
  for kind in kinds:
    print(f"| {kind} | {statistics.median(times[kind]):.1f} |")


if __name__ == "__main__":
  main()
