"""The seed of a layer's random order or permutation."""

import numpy as np

__all__ = ["seed_of"]


def seed_of(seed, ordering):
  """`seed`, or for a "random" `ordering` without one, a seed drawn from NumPy's generator.

  A fixed default seed gave every stacked layer the same random order, so the orders never
  alternated (the flow's Jacobian stayed triangular, or a coordinate conditioned nothing).
  NumPy's global generator is the one `keras.utils.set_random_seed` seeds, so a seeded
  program builds the same flow; the drawn seed goes into the layer's config.
  """
  if seed is None:
    return int(np.random.randint(0, 2**31 - 1)) if ordering == "random" else 0
  return int(seed)
