"""Keras layer for a fixed permutation of the last axis."""

import keras
import numpy as np
import tensorflow_probability as tfp

from tfp_flows.layers import _random_order
from tfp_flows.layers import flow_layer

__all__ = ["Permute"]

_ORDERS = ("reversed", "random")


@keras.saving.register_keras_serializable(package="tfp_flows")
class Permute(flow_layer.FlowLayer):
  """Fixed permutation of the last axis between flow transforms: `tfb.Permute`.

  Volume preserving (log-det 0), no trainable weights; the permutation is saved in the
  config. A cheaper alternative to a learned LU linear layer (`InvertibleConv1x1`).

  Args:
    permutation: "reversed", "random" (drawn with numpy from `seed`) or an explicit
      permutation of `range(D)`. Before a coupling that always moves the same half, a
      reversal alternates the halves; do not also alternate the coupling's `reverse`,
      which undoes it (and for odd D a reversal keeps the middle entry in the moved half:
      `tfp_flows.bijectors.coupling_scan.half_rotation` moves every entry through both).
    seed: seed of a random permutation; None (the default) draws one from NumPy's
      global generator (which `keras.utils.set_random_seed` seeds), so stacked layers
      get different permutations. The seed is saved in the config.
  """

  def __init__(self, permutation="reversed", seed=None, **kwargs):
    super().__init__(**kwargs)
    if isinstance(permutation, str):
      if permutation not in _ORDERS:
        raise ValueError(f"permutation must be one of {_ORDERS} or a list; got "
                         f"{permutation!r}.")
    else:
      permutation = [int(i) for i in permutation]
      if sorted(permutation) != list(range(len(permutation))):
        raise ValueError(f"permutation must be a permutation of range(D); got "
                         f"{permutation}.")
    self.permutation = permutation
    self.seed = _random_order.seed_of(seed, permutation)

  def build(self, input_shape):
    size = int(input_shape[-1])
    if self.permutation == "reversed":
      self._indices = list(range(size))[::-1]
    elif self.permutation == "random":
      self._indices = np.random.default_rng(self.seed).permutation(size).tolist()
    elif len(self.permutation) != size:
      raise ValueError(f"The permutation has {len(self.permutation)} entries but the "
                       f"input has {size} on its last axis.")
    else:
      self._indices = list(self.permutation)
    super().build(input_shape)

  def make_bijector(self):
    return tfp.bijectors.Permute(self._indices, name=self.bijector_name())

  def get_config(self):
    return {**super().get_config(), "permutation": self.permutation, "seed": self.seed}
