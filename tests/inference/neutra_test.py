"""NeuTra on a correlated Gaussian: R-hat, moments, samples in the original space, XLA."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_flows as tff

tfb = tfp.bijectors
tfd = tfp.distributions

MEAN = np.array([1.0, -2.0, 0.5])
COV = np.array([[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 0.5]])
TARGET = tfd.MultivariateNormalTriL(MEAN.astype("float32"),
                                    np.linalg.cholesky(COV).astype("float32"))


def _fitted_flow():
  """A coupling flow with a learned Gaussian prior, fitted by reverse KL (tfp.vi)."""
  keras.utils.set_random_seed(0)
  model = tff.FlowModel([
      tff.layers.AffineCoupling(hidden_units=(16,), scale="exp"),
      tff.layers.InvertibleConv1x1(lu=True, seed=1),
      tff.layers.GaussianPrior(),
  ], event_shape=[3])
  tfp.vi.fit_surrogate_posterior(TARGET.log_prob, model.distribution,
                                 tf.optimizers.Adam(2e-2), num_steps=300, sample_size=32,
                                 seed=(1, 2), jit_compile=True)
  return model


def test_neutra_nuts_on_a_correlated_gaussian():
  model = _fitted_flow()
  result = tff.inference.neutra_sample(TARGET.log_prob, model, num_results=500,
                                       num_chains=4, num_burnin_steps=200, seed=3)
  samples = result.samples.numpy()
  assert samples.shape == (500, 4, 3)
  rhat = tfp.mcmc.potential_scale_reduction(samples).numpy()
  assert np.all(rhat < 1.01), rhat
  ess = tfp.mcmc.effective_sample_size(samples, cross_chain_dims=1).numpy()
  flat = samples.reshape(-1, 3)
  # Moments within 4 Monte Carlo standard errors (mean) and 15% (covariance).
  np.testing.assert_array_less(np.abs(flat.mean(0) - MEAN),
                               4 * np.sqrt(np.diag(COV) / ess))
  np.testing.assert_allclose(np.cov(flat.T), COV, atol=0.15 * np.max(np.diag(COV)))
  # The flow straightened the target: few leapfrogs per step at a large step size.
  assert result.step_size.numpy() > 0.3
  assert result.num_gradient_evaluations.numpy() < 700 * 8
  assert 0.6 < result.acceptance_rate.numpy() < 0.99


@pytest.mark.parametrize("jit_compile", [False, True], ids=["eager", "xla"])
def test_hmc_samples_are_in_the_original_space(jit_compile):
  # An exact affine "flow" x = mu + L z: the pulled-back target is N(0, I). (Eager and
  # XLA chains differ: TF's stateless normal draws are other numbers under XLA.)
  flow = tfd.TransformedDistribution(
      tfd.Sample(tfd.Normal(0.0, 1.0), [3]),
      tfb.Chain([tfb.Shift(MEAN.astype("float32")),
                 tfb.ScaleMatvecTriL(np.linalg.cholesky(COV).astype("float32"))]))
  run = tff.inference.neutra_sample(TARGET.log_prob, flow, num_results=20, num_chains=2,
                                    num_burnin_steps=10, kernel="hmc",
                                    num_leapfrog_steps=3, seed=5, jit_compile=jit_compile)
  assert run.samples.shape == (20, 2, 3)
  # States are x (the target's space); the sampler's density is the pulled-back one,
  # log p(x) + log|det dx/dz| = log p(x) - ildj(x), here log N(z; 0, I).
  z = flow.bijector.inverse(run.samples)
  np.testing.assert_allclose(run.target_log_prob,
                             TARGET.log_prob(run.samples) - flow.bijector
                             .inverse_log_det_jacobian(run.samples, event_ndims=1),
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(run.target_log_prob,
                             tfd.MultivariateNormalDiag(tf.zeros(3)).log_prob(z),
                             rtol=1e-4, atol=1e-4)
  assert run.num_gradient_evaluations.numpy() == 30 * 3
  # The exact preconditioner makes every step acceptable at the adapted step size.
  assert run.acceptance_rate.numpy() > 0.5


@pytest.mark.parametrize("bijector", [tfb.Identity(), tfb.Softplus()],
                         ids=["identity", "softplus"])
def test_elementwise_bijectors_give_one_log_prob_per_chain(bijector):
  # Plain NUTS is NeuTra with the identity; TTK reduced an elementwise bijector's
  # log-det per coordinate ([chains, 3] against the target's [chains]).
  flow = tfd.TransformedDistribution(tfd.Sample(tfd.Normal(0.0, 1.0), [3]), bijector)
  target = tfd.Sample(tfd.Gamma(2.0, 1.0), [3])
  # Started inside the Gamma's support (the identity's own draws are half outside it).
  run = tff.inference.neutra_sample(target.log_prob, flow, num_results=5, num_chains=2,
                                    num_burnin_steps=5, kernel="hmc",
                                    num_leapfrog_steps=2, seed=1, jit_compile=False,
                                    initial_state=tf.fill([2, 3], 1.5))
  assert run.samples.shape == (5, 2, 3) and run.target_log_prob.shape == (5, 2)
  expected = target.log_prob(run.samples) - bijector.inverse_log_det_jacobian(
      run.samples, event_ndims=1)
  np.testing.assert_allclose(run.target_log_prob, expected, rtol=1e-5, atol=1e-5)


def test_a_reverse_kl_models_constraining_bijector_is_applied():
  # Positive target: log theta_i ~ N(-1, 0.5^2). The flow lives on R^2 and the model's
  # ReverseKL objective maps it on by tfb.Exp(); chains run without it would start at
  # negative theta, where the target is -inf, and never move.
  target = tfd.Sample(tfd.LogNormal(-1.0, 0.5), [2])
  keras.utils.set_random_seed(0)
  model = tff.FlowModel([tff.layers.AffineCoupling(hidden_units=(8,), scale="exp")], [2],
                        objective=tff.objectives.ReverseKL(
                            target.log_prob, constraining_bijector=tfb.Exp()))
  model.compile(optimizer=keras.optimizers.Adam(1e-2), steps_per_execution=50)
  model.fit(epochs=1, steps_per_epoch=100, verbose=0)
  result = tff.inference.neutra_sample(target.log_prob, model, num_results=300,
                                       num_chains=4, num_burnin_steps=150, seed=3)
  samples = result.samples.numpy().reshape(-1, 2)
  assert samples.min() > 0
  ess = tfp.mcmc.effective_sample_size(result.samples, cross_chain_dims=1).numpy()
  mean, sd = np.exp(-1.0 + 0.125), np.exp(-1.0 + 0.125) * np.sqrt(np.expm1(0.25))
  np.testing.assert_array_less(np.abs(samples.mean(0) - mean), 4 * sd / np.sqrt(ess))
  assert result.acceptance_rate.numpy() > 0.5


def test_a_target_that_is_not_finite_at_the_start_is_an_error():
  flow = tfd.TransformedDistribution(tfd.Sample(tfd.Normal(0.0, 1.0), [2]), tfb.Shift(-5.0))
  target = tfd.Sample(tfd.LogNormal(0.0, 1.0), [2])
  with pytest.raises(ValueError, match="not finite at 4 of the 4 chains' starting points"):
    tff.inference.neutra_sample(target.log_prob, flow, num_results=5, num_chains=4,
                                seed=1)
  # Called inside a tf.function, the check is an assertion of the graph.
  in_graph = tf.function(lambda: tff.inference.neutra_sample(
      target.log_prob, flow, num_results=5, num_chains=4, seed=1, jit_compile=False))
  with pytest.raises(tf.errors.InvalidArgumentError, match="not finite at some chains"):
    in_graph()


def test_an_int_seed_repeats_the_chains():
  flow = tfd.TransformedDistribution(tfd.Sample(tfd.Normal(0.0, 1.0), [3]),
                                     tfb.Shift(MEAN.astype("float32")))
  runs = [tff.inference.neutra_sample(TARGET.log_prob, flow, num_results=20,
                                      num_chains=2, kernel="hmc", seed=1).samples.numpy()
          for _ in range(2)]
  np.testing.assert_array_equal(runs[0], runs[1])


def test_an_autoregressive_spline_flow_runs_under_xla():
  # TFP's kernels take gradients with tf.gradients with respect to the bijector's
  # inverse, which was the spline kernel's call output: XLA refused to compile it
  # ("indices[-1] is out of range") in neutra_sample's default jit_compile=True.
  keras.utils.set_random_seed(0)
  flow = tff.models.NeuralSplineFlow(3, num_layers=2, hidden_units=(8,),
                                     autoregressive=True)
  flow_weights = [w.numpy() for w in flow.weights]
  flow.set_weights([w + 0.1 * np.random.default_rng(i).normal(size=w.shape)
                    for i, w in enumerate(flow_weights)])
  kernel = tfp.mcmc.TransformedTransitionKernel(
      tfp.mcmc.HamiltonianMonteCarlo(TARGET.log_prob, 0.3, num_leapfrog_steps=2),
      flow.bijector)
  x = tf.constant([[0.3, -0.2, 0.1], [1.0, 0.5, -0.4]])

  def gradient(x):
    return kernel.bootstrap_results(x).inner_results.accepted_results.grads_target_log_prob

  eager = gradient(x)[0].numpy()
  assert np.all(np.abs(eager) > 1e-3)
  np.testing.assert_allclose(tf.function(gradient, jit_compile=True)(x)[0].numpy(), eager,
                             rtol=1e-4, atol=1e-5)
  result = tff.inference.neutra_sample(TARGET.log_prob, flow, num_results=5, num_chains=2,
                                       num_burnin_steps=2, kernel="hmc", seed=1)
  assert result.samples.shape == (5, 2, 3) and np.all(np.isfinite(result.samples))


def test_bad_arguments_are_clear_errors():
  with pytest.raises(ValueError, match="kernel"):
    tff.inference.neutra_sample(TARGET.log_prob, tfd.TransformedDistribution(
        tfd.Normal(0.0, 1.0), tfb.Exp()), 10, kernel="mala")
  with pytest.raises(TypeError, match="FlowModel"):
    tff.inference.neutra_sample(TARGET.log_prob, tfd.Normal(0.0, 1.0), 10)
  # The docstring asks for at least one burn-in step; 0 and -5 ran one silently.
  for steps in (0, -5):
    with pytest.raises(ValueError, match="num_burnin_steps must be a positive int"):
      tff.inference.neutra_sample(TARGET.log_prob, tfd.TransformedDistribution(
          tfd.Normal(0.0, 1.0), tfb.Exp()), 10, num_burnin_steps=steps)
