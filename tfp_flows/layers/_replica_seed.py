"""Stateless seeds drawn from a layer's `keras.random.SeedGenerator`, one per replica."""

import tensorflow as tf

from tfp_flows.numerics import probes


def draw_replica_seed(seed_generator):
  """A `[2]` int32 stateless seed from `seed_generator`, distinct on every replica.

  Under `tf.distribute` every replica holds the same SeedGenerator state and advances it
  the same way, so what it draws repeats on all replicas: their dequantisation noise,
  Hutchinson probes and Russian-roulette counts would be copies, and averaging the
  replicas' gradients would not cut the estimators' variance at all. Folding the
  replica's global index (`replica_id_in_sync_group`, counted across workers) into the
  drawn seed makes the replicas' draws independent and still reproducible. With one
  replica the drawn seed is returned as it is, so single-device runs do not change.

  Args:
    seed_generator: the layer's `keras.random.SeedGenerator` (advanced by one draw).

  Returns:
    An int32 tensor of shape `[2]` for `tf.random.stateless_*` ops.
  """
  # The draw of `keras.random.randint([2], 0, 2**31 - 1, seed=seed_generator)`, value for
  # value, but with the algorithm named: TF's "auto_select" resolves it at run time,
  # which in a compiled step costs ~0.5 ms per op (benchmarks/seed_draw_cost.py).
  state = tf.convert_to_tensor(seed_generator.next())
  if state.dtype != tf.int32:
    state = tf.cast(tf.math.floormod(state, tf.int32.max - 1), tf.int32)
  seed = tf.random.stateless_uniform([2], state, minval=0, maxval=2**31 - 1,
                                     dtype=tf.int32, alg=probes.RNG_ALGORITHM)
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return seed
  replica = tf.cast(context.replica_id_in_sync_group, tf.int32)
  return tf.random.experimental.stateless_fold_in(seed, replica, alg=probes.RNG_ALGORITHM)
