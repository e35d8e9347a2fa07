"""A flow's live bijector and distribution inside `tfp.experimental.vi` surrogates.

TFP 0.25's surrogate builders that take a bijector or a base distribution:
`build_split_flow_surrogate_posterior(event_shape, trainable_bijector)` (a flow over a
structured event), `build_factored_surrogate_posterior(event_shape, bijector=)` and
`build_affine_surrogate_posterior(event_shape, operators, bijector=)` (the bijector on
top of a trainable Normal / affine map), and
`build_affine_surrogate_posterior_from_base_distribution(base_distribution, operators)`
(an affine map on top of the flow's distribution). Each gets `model.bijector` or
`model.distribution`, and `tfp.vi.fit_surrogate_posterior` (with its default
`surrogate.trainable_variables`) must move every flow weight and bring the surrogate to
a Gaussian target whose KL, mean and covariance are known in closed form.
`build_asvi_surrogate_posterior` builds from the prior's structure and takes no
bijector, by design.

The target is normalised, so the loss (negative ELBO) estimates KL(q || p) >= 0.
The affine-from-base surrogate trains under XLA (`jit_compile=True`), the others as
graphs, to keep the file fast (`live_distribution_test` runs every vector family under
XLA through `fit_surrogate_posterior`).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_flows as tff

tfb = tfp.bijectors
tfd = tfp.distributions
evi = tfp.experimental.vi

MEAN = np.array([1.0, -1.0], np.float32)
COV = np.array([[1.0, 0.5], [0.5, 2.0]], np.float32)
TARGET = tfd.MultivariateNormalTriL(MEAN, np.linalg.cholesky(COV))
# The same Gaussian as a structured JointDistribution: a ~ N(1, 1) and
# b | a ~ N(-1 + 0.5 (a - 1), sqrt(1.75)), so Var b = 0.25 + 1.75 = 2, Cov(a, b) = 0.5.
JOINT_TARGET = tfd.JointDistributionNamed({
    "a": tfd.Normal(1.0, 1.0),
    "b": lambda a: tfd.Normal(-1.0 + 0.5 * (a - 1.0), np.sqrt(1.75).astype(np.float32))})

NUM_DRAWS = 20000
SAMPLE_SIZE = 64


def _coupling_flow():
  keras.utils.set_random_seed(0)
  return tff.FlowModel([tff.layers.AffineCoupling(hidden_units=(8,)),
                        tff.layers.AffineCoupling(hidden_units=(8,), reverse=True)], [2])


def _fit(target_log_prob, surrogate, model, num_steps, jit_compile):
  """Runs `tfp.vi.fit_surrogate_posterior`; checks every flow weight moved; the losses."""
  variables = {v.ref() for v in surrogate.trainable_variables}
  for weight in model.trainable_weights:
    assert weight.value.ref() in variables, f"{weight.path} is not a surrogate variable"
  before = [keras.ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
  optimizer = tf.optimizers.Adam(tf.optimizers.schedules.CosineDecay(2e-2, num_steps))
  # 64 draws per step: with 32 the last iterate's gradient noise alone moved the
  # fitted mean by up to 0.09 (at a KL of 0.006) depending on XLA's rounding.
  losses = tfp.vi.fit_surrogate_posterior(
      target_log_prob, surrogate, optimizer, num_steps=num_steps, sample_size=SAMPLE_SIZE,
      seed=(1, 2), jit_compile=jit_compile).numpy()
  for weight, old in zip(model.trainable_weights, before):
    change = np.max(np.abs(keras.ops.convert_to_numpy(weight) - old))
    assert change > 1e-3, f"{weight.path} did not change"
  assert np.all(np.isfinite(losses))
  return losses


def _check_moments(draws):
  # 20000 draws give standard errors near 0.01 (means) and 0.02 (covariances); the
  # remaining fit error (KL < 0.03 nats) is of a few times that.
  np.testing.assert_allclose(draws.mean(0), MEAN, atol=0.08)
  np.testing.assert_allclose(np.cov(draws.T), COV, atol=0.2)


def test_split_flow_surrogate_with_a_spline_flow_bijector():
  """A NeuralSplineFlow's bijector as `trainable_bijector`, a JointDistribution target."""
  keras.utils.set_random_seed(0)
  model = tff.models.NeuralSplineFlow(event_shape=[2], num_blocks=2, num_bins=4,
                                      hidden_units=(8,), actnorm=False)
  surrogate = evi.build_split_flow_surrogate_posterior(
      event_shape=JOINT_TARGET.event_shape, trainable_bijector=model.bijector)
  # The first loss (at the initial weights, SAMPLE_SIZE draws) estimates the initial KL, here
  # measured independently on 20000 draws of the surrogate's own sample and log_prob.
  draws = surrogate.sample(NUM_DRAWS, seed=(5, 6))
  log_ratio = (surrogate.log_prob(draws) - JOINT_TARGET.log_prob(draws)).numpy()
  initial_kl = log_ratio.mean()
  losses = _fit(JOINT_TARGET.log_prob, surrogate, model, num_steps=600, jit_compile=False)
  np.testing.assert_allclose(losses[0], initial_kl,
                             atol=4 * log_ratio.std() / np.sqrt(SAMPLE_SIZE))
  assert losses[-50:].mean() < 0.03 < initial_kl / 10
  draws = surrogate.sample(NUM_DRAWS, seed=(3, 4))
  assert set(draws) == {"a", "b"} and draws["a"].shape == (NUM_DRAWS,)
  _check_moments(np.stack([draws["a"].numpy(), draws["b"].numpy()], -1))


BUILDERS = {
    # The flow on top of a trainable factored Normal.
    "factored": lambda model: evi.build_factored_surrogate_posterior(
        event_shape=[2], bijector=model.bijector),
    # The flow on top of a trainable full-covariance affine map of N(0, I).
    "affine": lambda model: evi.build_affine_surrogate_posterior(
        event_shape=[2], operators="tril", bijector=model.bijector),
    # A trainable full-covariance affine map on top of the flow's distribution.
    "affine_from_base": lambda model: (
        evi.build_affine_surrogate_posterior_from_base_distribution(
            model.distribution, operators="tril")),
}


@pytest.mark.parametrize("builder,jit_compile", [("factored", False), ("affine", False),
                                                 ("affine_from_base", True)])
def test_affine_and_factored_surrogates_train_the_flow(builder, jit_compile):
  model = _coupling_flow()
  surrogate = BUILDERS[builder](model)
  losses = _fit(TARGET.log_prob, surrogate, model, num_steps=600,
                jit_compile=jit_compile)
  assert losses[:5].mean() > 0.5 and losses[-50:].mean() < 0.03
  draws = surrogate.sample(NUM_DRAWS, seed=(3, 4)).numpy()
  _check_moments(draws)
  # The surrogate's density is the flow's, composed with the builder's parts: on its
  # own draws it matches the target's to the fitted KL.
  log_ratio = (surrogate.log_prob(draws[:4000]) - TARGET.log_prob(draws[:4000])).numpy()
  assert -0.01 < log_ratio.mean() < 0.05


def test_joint_distribution_surrogate_with_a_flow_component():
  """q(x, y) = flow(x) N(y | x_1 + x_2 + s, sigma): fit_surrogate_posterior trains both.

  Target: x ~ N(MEAN, COV), y | x ~ N(x_1 + x_2, 0.5), so the surrogate can be exact
  (s = 0, sigma = 0.5) and E[y] = sum(MEAN) = 0, Var y = 1^T COV 1 + 0.25 = 4.25.
  """
  model = _coupling_flow()
  shift = tf.Variable(1.0, name="shift")
  scale = tfp.util.TransformedVariable(1.0, tfb.Softplus(), name="scale")
  surrogate = tfd.JointDistributionNamed({
      "x": model.distribution,
      "y": lambda x: tfd.Normal(tf.reduce_sum(x, -1) + shift, scale)})
  target = tfd.JointDistributionNamed({
      "x": TARGET, "y": lambda x: tfd.Normal(tf.reduce_sum(x, -1), 0.5)})
  losses = _fit(target.log_prob, surrogate, model, num_steps=600, jit_compile=False)
  assert losses[:5].mean() > 0.5 and losses[-50:].mean() < 0.03
  np.testing.assert_allclose([shift.numpy(), scale.numpy()], [0.0, 0.5], atol=0.05)
  draws = surrogate.sample(NUM_DRAWS, seed=(3, 4))
  _check_moments(draws["x"].numpy())
  np.testing.assert_allclose(draws["y"].numpy().mean(), 0.0, atol=0.1)
  np.testing.assert_allclose(draws["y"].numpy().var(), 4.25, rtol=0.1)
