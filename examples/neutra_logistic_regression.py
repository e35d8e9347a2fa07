"""Bayesian logistic regression on breast-cancer data: flow VI, then NeuTra-NUTS vs NUTS.

Data: scikit-learn's bundled Wisconsin breast-cancer set (569 patients, 30 features,
standardised), an intercept, and a N(0, 1) prior on the 31 coefficients:

  log p~(beta) = sum_n log Bernoulli(y_n | sigmoid(x_n . beta)) + log N(beta; 0, I)

1. Variational inference. An inverse-autoregressive flow (`FlowModel` with IAF layers
   and a learned Gaussian prior, trained by `tff.objectives.ReverseKL` under XLA)
   against TFP's mean-field and full-rank Gaussian surrogates
   (`tfp.experimental.vi.build_factored_surrogate_posterior` /
   `build_affine_surrogate_posterior`, trained by `tfp.vi.fit_surrogate_posterior`).
   Reported: ELBO, importance ESS fraction and PSIS k-hat on fresh draws.
2. MCMC. NUTS on beta (an identity "flow") against NeuTra-NUTS through the fitted
   flow (`tff.inference.neutra_sample`), 4 chains each: minimum effective sample size
   over the 31 coefficients (`tfp.mcmc.effective_sample_size`) per second (wall time
   of the whole XLA-compiled run, compile included) and per gradient evaluation
   (leapfrog steps), and the largest R-hat.

Run: python examples/neutra_logistic_regression.py [--vi_steps 2000] [--num_results 1000]
"""

import argparse
import time

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from sklearn import datasets

import tfp_flows as tff

tfb = tfp.bijectors
tfd = tfp.distributions


def make_target():
  x, y = datasets.load_breast_cancer(return_X_y=True)
  x = (x - x.mean(0)) / x.std(0)
  x = np.concatenate([np.ones([len(x), 1]), x], 1).astype("float32")
  x, y = tf.constant(x), tf.constant(y.astype("float32"))

  def target_log_prob(beta):
    logits = tf.einsum("nd,...d->...n", x, beta)
    likelihood = tf.reduce_sum(tfd.Bernoulli(logits=logits).log_prob(y), axis=-1)
    return likelihood + tf.reduce_sum(tfd.Normal(0.0, 1.0).log_prob(beta), axis=-1)

  return target_log_prob, x.shape[1]


def flow_vi(target_log_prob, dims, steps):
  keras.utils.set_random_seed(0)
  layers = []
  for i in range(2):
    layers += [tff.layers.AffineAutoregressive(hidden_units=(64,), order="random", seed=i,
                                               inverse_autoregressive=True),
               tff.layers.Permute()]
  model = tff.FlowModel(layers + [tff.layers.GaussianPrior()], [dims],
                        objective=tff.objectives.ReverseKL(target_log_prob,
                                                           num_samples=64))
  schedule = keras.optimizers.schedules.CosineDecay(5e-3, decay_steps=steps)
  model.compile(optimizer=keras.optimizers.Adam(schedule), jit_compile=True)
  start = time.perf_counter()
  model.fit(epochs=1, steps_per_epoch=steps, verbose=0)
  return model, time.perf_counter() - start


def gaussian_vi(target_log_prob, dims, steps, full_rank, learning_rate):
  build = (tfp.experimental.vi.build_affine_surrogate_posterior if full_rank
           else tfp.experimental.vi.build_factored_surrogate_posterior)
  surrogate = build(event_shape=[dims], seed=(0, 1))
  start = time.perf_counter()
  tfp.vi.fit_surrogate_posterior(target_log_prob, surrogate,
                                 tf.optimizers.Adam(learning_rate), steps, sample_size=64,
                                 seed=(2, 3), jit_compile=True)
  return surrogate, time.perf_counter() - start


def vi_row(name, distribution, target_log_prob, seconds, steps):
  x = distribution.sample(4000, seed=(4, 5))
  log_w = (target_log_prob(x) - distribution.log_prob(x)).numpy()
  result = tff.inference.importance_weights(log_w)
  print(f"| {name} | {steps} | {seconds:.1f} | {np.mean(log_w):.2f} | "
        f"{result.ess_fraction:.3f} | {result.khat:.2f} |")


def mcmc_row(name, target_log_prob, flow, args):
  start = time.perf_counter()
  result = tff.inference.neutra_sample(target_log_prob, flow, args.num_results,
                                       num_chains=4, num_burnin_steps=args.num_burnin,
                                       seed=7)
  seconds = time.perf_counter() - start
  samples = result.samples
  ess = tf.reduce_min(tfp.mcmc.effective_sample_size(samples, cross_chain_dims=1)).numpy()
  rhat = tf.reduce_max(tfp.mcmc.potential_scale_reduction(samples)).numpy()
  gradients = 4 * result.num_gradient_evaluations.numpy()
  print(f"| {name} | {seconds:.1f} | {result.step_size.numpy():.3f} | "
        f"{gradients / (4 * (args.num_results + args.num_burnin)):.1f} | {ess:.0f} | "
        f"{ess / seconds:.1f} | {1e3 * ess / gradients:.2f} | {rhat:.3f} |")


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--vi_steps", type=int, default=2000)
  parser.add_argument("--num_results", type=int, default=1000)
  parser.add_argument("--num_burnin", type=int, default=500)
  parser.add_argument("--gaussian_learning_rate", type=float, default=2e-2,
                      help="Adam rate of the Gaussian surrogates (few parameters: a "
                           "larger rate than the flow's converges in the same steps)")
  args = parser.parse_args()
  target_log_prob, dims = make_target()

  print("| surrogate | steps | fit seconds (incl. compile) | ELBO | ESS fraction | k-hat |")
  print("|---|---|---|---|---|---|")
  model, seconds = flow_vi(target_log_prob, dims, args.vi_steps)
  vi_row("IAF flow (ReverseKL fit)", model.distribution, target_log_prob, seconds,
         args.vi_steps)
  for full_rank in (False, True):
    surrogate, seconds = gaussian_vi(target_log_prob, dims, args.vi_steps, full_rank,
                                     args.gaussian_learning_rate)
    vi_row("full-rank Gaussian" if full_rank else "mean-field Gaussian", surrogate,
           target_log_prob, seconds, args.vi_steps)

  print("\n| sampler (4 chains) | seconds (incl. compile) | step size | leapfrogs/step | "
        "min ESS | ESS/s | ESS per 1000 gradients | max R-hat |")
  print("|---|---|---|---|---|---|---|---|")
  identity = tfd.TransformedDistribution(tfd.Sample(tfd.Normal(0.0, 1.0), [dims]),
                                         tfb.Identity())
  mcmc_row("NUTS", target_log_prob, identity, args)
  mcmc_row("NeuTra-NUTS (IAF)", target_log_prob, model, args)


if __name__ == "__main__":
  main()
