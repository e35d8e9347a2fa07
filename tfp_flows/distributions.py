"""The default base distribution of a flow: a normal whose seeded draws name Philox.

`PhiloxNormal` is `tfd.Normal` with one change: a seeded (stateless) draw runs
`tf.random.stateless_normal(..., alg="philox")` where `tfd.Normal` leaves the algorithm
at TF's default, "auto_select". Both give the same numbers (auto_select picks Philox on
CPU and GPU, eagerly and under XLA), but under XLA the default derives its key and
counter with a `StatelessRandomGetKeyCounter` op, and the XLA CPU backend then emits
the Philox rounds into one loop fusion over the four output words of each block (as
the optimised HLO reads, it recomputes the rounds per word): drawing 10,000 x 2 normals
took 8.6 ms that way (a quarter of the time of sampling a 2-D spline flow) and 0.58 ms
with the algorithm named (benchmarks/RESULTS.md).

Unseeded draws (seed None or a Python int, TFP's stateful seeds) and everything else
(log_prob, entropy, slicing, batch shapes, CompositeTensor behaviour) are `tfd.Normal`'s.
"""

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_flows.numerics import probes

tfd = tfp.distributions

__all__ = ["PhiloxNormal", "standard_normal"]


def _is_stateless_seed(seed):
  """Whether TFP reads `seed` as a stateless `[2]` seed (not None, an int or a salt)."""
  if seed is None or isinstance(seed, (int, np.integer)):
    return False
  # TFP wraps some internal seeds in a one-field namedtuple ("old salt"); those keep
  # TFP's own path.
  return not (isinstance(seed, tuple) and len(seed) == 1)


class PhiloxNormal(tfd.Normal):
  """N(loc, scale^2), as `tfd.Normal`, with seeded draws made by the Philox algorithm.

  Sampling: x = loc + scale * e with e ~ N(0, 1) drawn by
  `tf.random.stateless_normal(shape, seed, alg="philox")` for a stateless seed, the
  values `tfd.Normal` draws with that seed on CPU and GPU. Cost under XLA on CPU: about
  1/15 of `tfd.Normal`'s seeded draw (see the module docstring).
  On a device where auto_select picks another algorithm (TPUs may pick ThreeFry), the
  seeded values differ from `tfd.Normal`'s, still deterministic in the seed.

  Args: as `tfd.Normal`.
  """

  def _sample_n(self, n, seed=None):
    if not _is_stateless_seed(seed):
      return super()._sample_n(n, seed=seed)
    loc = tf.convert_to_tensor(self.loc)
    scale = tf.convert_to_tensor(self.scale)
    shape = tf.concat([[n], self._batch_shape_tensor(loc=loc, scale=scale)], axis=0)
    draw = tf.random.stateless_normal(shape, tfp.random.sanitize_seed(seed),
                                      dtype=self.dtype, alg=probes.RNG_ALGORITHM)
    return draw * scale + loc


def standard_normal(event_shape, dtype):
  """`tfd.Sample(PhiloxNormal(0, 1), event_shape)`: N(0, I) over `event_shape`, in `dtype`."""
  dtype = np.dtype(dtype)
  return tfd.Sample(PhiloxNormal(dtype.type(0), dtype.type(1)), event_shape)
