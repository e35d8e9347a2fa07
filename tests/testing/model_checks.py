"""Reusable checks for FlowModels.

* `assert_log_prob_is_batch_independent`: a point's `log_prob` does not depend on the
  other rows of its batch or on its position there.
"""

import numpy as np

__all__ = ["assert_log_prob_is_batch_independent"]


def assert_log_prob_is_batch_independent(model, x, rtol=1e-6, atol=1e-6):
  """`model.log_prob` of every row of `x` equals its value in a shuffled batch and alone.

  Returns:
    `model.log_prob(x)` as a numpy array.
  """
  full = model.log_prob(x).numpy()
  order = np.random.default_rng(0).permutation(len(x))
  np.testing.assert_allclose(model.log_prob(x[order]).numpy(), full[order], rtol=rtol,
                             atol=atol)
  alone = np.concatenate([model.log_prob(x[i:i + 1]).numpy() for i in range(len(x))])
  np.testing.assert_allclose(alone, full, rtol=rtol, atol=atol)
  return full
