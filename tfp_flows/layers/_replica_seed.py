"""Stateless seeds drawn from a layer's `keras.random.SeedGenerator`, one per replica."""

import keras
import tensorflow as tf


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
  seed = keras.random.randint([2], 0, 2**31 - 1, seed=seed_generator, dtype="int32")
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return seed
  replica = tf.cast(context.replica_id_in_sync_group, tf.int32)
  return tf.random.experimental.stateless_fold_in(seed, replica)
