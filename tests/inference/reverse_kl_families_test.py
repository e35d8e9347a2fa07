"""Which flow families ReverseKL trains: sampling must be differentiable.

Each supported family takes a few XLA-compiled ReverseKL steps on a 2-D Gaussian target
and every trainable weight must move (a weight the sampling pass does not reach, or a
sampling pass without a gradient, would leave it unchanged); the loss must fall.
"""

import keras
import numpy as np
import pytest
import tensorflow_probability as tfp

import tfp_flows as tff

tfd = tfp.distributions

TARGET = tfd.MultivariateNormalDiag([1.0, -1.0], [0.5, 2.0])

FAMILIES = {
    "masked_autoregressive": lambda: [tff.layers.AffineAutoregressive(hidden_units=(8,))],
    "inverse_autoregressive": lambda: [tff.layers.AffineAutoregressive(
        hidden_units=(8,), inverse_autoregressive=True)],
    "spline_coupling": lambda: [tff.layers.SplineCoupling(num_bins=4, hidden_units=(8,)),
                                tff.layers.SplineCoupling(num_bins=4, hidden_units=(8,),
                                                          reverse=True)],
    "ffjord_adjoint": lambda: [tff.layers.FFJORD(hidden_units=(8,), rtol=1e-4, atol=1e-4,
                                                 seed=1)],
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_trains_every_weight(family):
  keras.utils.set_random_seed(0)
  model = tff.FlowModel(FAMILIES[family]() + [tff.layers.GaussianPrior()], [2],
                        objective=tff.objectives.ReverseKL(TARGET.log_prob,
                                                           num_samples=32))
  before = [keras.ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
  model.compile(optimizer=keras.optimizers.Adam(2e-2), jit_compile=True)
  loss = model.fit(epochs=2, steps_per_epoch=15, verbose=0).history["loss"]
  for weight, old in zip(model.trainable_weights, before):
    assert np.max(np.abs(keras.ops.convert_to_numpy(weight) - old)) > 1e-4, weight.path
  assert np.all(np.isfinite(loss)) and loss[-1] < loss[0]
