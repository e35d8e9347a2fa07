"""Random probes and uniforms from explicit stateless seeds: the package's one RNG convention.

Every random draw of an estimator (Hutchinson probes, Russian-roulette counts) comes from
here: a stateless `[2]` seed in, TensorFlow's Philox algorithm, and floats built from
integer bits. Philox integer draws are bit-identical in eager mode, graph mode and under
XLA (TF's default "auto_select" need not be); its float draws are not (XLA converts bits
to floats differently). So the same seed gives the same probes in every mode.
"""

import math

import numpy as np
import tensorflow as tf

from tfp_flows.numerics import checks

__all__ = ["PROBE_DISTRIBUTIONS", "RNG_ALGORITHM", "check_batched", "content_keyed_probes",
           "hutchinson_probes", "split_seed", "stateless_seed", "uniform_float64"]

PROBE_DISTRIBUTIONS = ("rademacher", "normal")
RNG_ALGORITHM = "philox"

# The Mersenne prime 2^31 - 1: products of a 32-bit word and a residue fit in int64.
_HASH_PRIME = 2**31 - 1
# Sign, exponent and the top 8 mantissa bits of a float32 (the low 15 bits cleared).
_KEY_MASK = -(2**15)


def stateless_seed(seed):
  """A user's seed as a `[2]` stateless seed (None stays None: fresh draws).

  TFP treats a Python int seed as stateful (not repeatable), so an int `s` in
  [0, 2**31) becomes `[0, s]`; a `[2]` integer tensor (or list) passes through.

  Raises:
    ValueError: for an int out of range, a bool, or anything that is not two integers
      (a float, a string, `[1, 2, 3]`, whose third entry would be ignored).
  """
  if seed is None:
    return None
  message = "seed must be an int in [0, 2**31) or a [2] integer stateless seed; got"
  if isinstance(seed, (bool, np.bool_)):
    raise ValueError(f"{message} the bool {seed}.")
  if isinstance(seed, (int, np.integer)):
    seed = int(seed)
    if not 0 <= seed < 2**31:
      raise ValueError(f"{message} {seed}.")
    return tf.constant([0, seed], tf.int32)
  try:
    tensor = tf.convert_to_tensor(seed)
  except (TypeError, ValueError) as error:
    raise ValueError(f"{message} {seed!r}.") from error
  if not tensor.dtype.is_integer or not tensor.shape.is_compatible_with([2]):
    raise ValueError(f"{message} {seed!r} ({tensor.dtype.name}, shape "
                     f"{tensor.shape.as_list() if tensor.shape.rank is not None else None}).")
  return tensor


def split_seed(seed, num=2):
  """`num` independent stateless seeds (a `[num, 2]` tensor) from one."""
  return tf.random.experimental.stateless_split(seed, num=num, alg=RNG_ALGORITHM)


def hutchinson_probes(shape, seed, dtype=tf.float32, distribution="rademacher"):
  """Random probes v with E[v] = 0 and E[v v^T] = I, from a stateless seed.

  ```none
  rademacher: v_i = +-1 with probability 1/2 each
  normal:     v_i ~ N(0, 1)                  (Box-Muller from `uniform_float64`)
  ```

  For a matrix A, v^T A v is an unbiased estimate of tr(A) under either distribution.
  Its variance is 2 sum_{i != j} ((A_ij + A_ji) / 2)^2 for Rademacher probes and
  2 ||(A + A^T) / 2||_F^2 for normal ones: Rademacher never does worse, and removes the
  diagonal's contribution entirely, so it is the default.

  Args:
    shape: the probe shape, usually `tf.shape(x)` (one probe per row).
    seed: stateless seed, an int32/int64 tensor of shape [2].
    dtype: floating dtype of the probes.
    distribution: "rademacher" or "normal".

  Returns:
    A tensor of `shape` and `dtype`.

  Raises:
    ValueError: unknown `distribution` or a non-floating `dtype`.
  """
  dtype = tf.as_dtype(dtype)
  if not dtype.is_floating:
    raise ValueError(f"Probes need a floating dtype; got {dtype!r}.")
  checks.one_of("distribution", distribution, PROBE_DISTRIBUTIONS)
  if distribution == "rademacher":
    bits = tf.random.stateless_uniform(shape, seed, minval=0, maxval=2, dtype=tf.int32,
                                       alg=RNG_ALGORITHM)
    return tf.cast(2 * bits - 1, dtype)
  uniforms = uniform_float64(tf.concat([tf.cast(shape, tf.int32), [2]], axis=0), seed)
  radius = tf.sqrt(-2.0 * tf.math.log1p(-uniforms[..., 0]))  # 1 - u in (0, 1]
  return tf.cast(radius * tf.cos(2.0 * math.pi * uniforms[..., 1]), dtype)


def content_keyed_probes(x, seed):
  """Rademacher probes, one per row of `x`, that depend on the row's values, not its index.

  `hutchinson_probes(tf.shape(x), seed)` gives row n the n-th probe of the stream, so a
  point's estimate changes with its position in the batch. Here each row's probe is a
  function of the row's values and the seed only: the same point gets the same probe
  alone or in any batch, and distinct points get unrelated probes, so an evaluation
  with a fixed seed is deterministic per point. The values are keyed at 8 significant
  bits (float32 with the low 15 mantissa bits cleared): round-off-level differences (an
  exported graph's kernels, another batch size's matmul blocking) then change the
  probe only when they straddle a rounding boundary, with probability about
  D * (ulps of difference) / 2^15 per row. With the seed drawing the hash family
  (p = 2^31 - 1, w_i the keyed words of the row, j the output positions):

  ```none
  key      = sum_i (w_i m_i mod p) mod p                       m_i uniform in [1, p)
  v_j      = +1 if (key a_j + b_j mod p) is even, else -1      a_j, b_j uniform in [0, p)
  ```

  For a fixed key the v_j are independent and fair up to 1/p, so E[v v^T] = I over the
  family, as Hutchinson's estimator needs; two rows share a probe only if they agree
  to 8 significant bits everywhere or their keys collide (probability 1/p). Exact
  integer arithmetic: eager mode, graphs and XLA give the same probes.

  Args:
    x: tensor `[N, *event]` with static event dimensions, float16/32/64.
    seed: stateless seed, an int32/int64 tensor of shape [2].

  Returns:
    `[N, *event]` probes of `x.dtype`, entries +-1.
  """
  x = tf.convert_to_tensor(x)
  check_batched(x)
  if not x.dtype.is_floating:
    raise ValueError(f"content_keyed_probes needs floating x; got {x.dtype!r}.")
  size = math.prod(x.shape[1:])
  rows = tf.reshape(tf.cast(x, tf.float32), [-1, size])
  # -0.0 and 0.0 are the same point: give them the same bits.
  rows = tf.where(tf.equal(rows, 0.0), tf.zeros_like(rows), rows)
  words = tf.bitwise.bitwise_and(tf.bitcast(rows, tf.int32), _KEY_MASK)
  words = tf.bitwise.bitwise_and(tf.cast(words, tf.int64), 0xFFFFFFFF)
  key_seed, sign_seed = tf.unstack(split_seed(seed))
  multipliers = tf.random.stateless_uniform([size], key_seed, minval=1,
                                            maxval=_HASH_PRIME, dtype=tf.int64,
                                            alg=RNG_ALGORITHM)
  key = tf.math.floormod(tf.reduce_sum(tf.math.floormod(words * multipliers, _HASH_PRIME),
                                       axis=1, keepdims=True), _HASH_PRIME)
  a, b = tf.unstack(tf.random.stateless_uniform([2, size], sign_seed, minval=0,
                                                maxval=_HASH_PRIME, dtype=tf.int64,
                                                alg=RNG_ALGORITHM))
  parity = tf.math.floormod(tf.math.floormod(key * a + b, _HASH_PRIME), 2)
  return tf.reshape(tf.cast(1 - 2 * parity, x.dtype), tf.shape(x))


def uniform_float64(shape, seed):
  """Stateless float64 uniforms on [0, 1 - 2^-53], the same in eager mode and under XLA.

  53 random bits from two uint32 words: (a >> 6) * 2^27 + (b >> 5), divided by 2^53,
  every step exact in float64. The two words of an element sit next to each other (a
  trailing axis), so element i uses words 2i and 2i + 1 of the stream whatever the shape:
  a row's probe does not change with the batch size.
  """
  shape = tf.concat([tf.cast(shape, tf.int32), [2]], axis=0)
  words = tf.random.stateless_uniform(shape, seed, minval=None, maxval=None, dtype=tf.uint32,
                                      alg=RNG_ALGORITHM)
  high = tf.cast(tf.bitwise.right_shift(words[..., 0], 6), tf.float64)
  low = tf.cast(tf.bitwise.right_shift(words[..., 1], 5), tf.float64)
  return (high * 2.0**27 + low) * 2.0**-53


def check_batched(x):
  """Raises ValueError unless `x` has a static rank of at least 2, `[batch, *event]`."""
  if x.shape.rank is None or x.shape.rank < 2:
    raise ValueError("x must have a static rank of at least 2, [batch, *event]; got shape "
                     f"{x.shape}.")
