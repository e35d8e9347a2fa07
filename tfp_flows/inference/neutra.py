"""NeuTra: HMC / NUTS in the latent space of a flow fitted to the posterior.

Hoffman et al. (2019, arXiv:1903.03704): if a flow `x = f(z)`, `z ~ N(0, I)`, fits the
posterior p(x) (variational inference, `FlowModel(objective="reverse_kl")` or
`tfp.vi.fit_surrogate_posterior`), then the pulled-back density

```none
log p_z(z) = log p(f(z)) + log|det df/dz|
```

is close to a standard normal: the funnels, banana ridges and correlations that make
HMC's step size a compromise are straightened out. `tfp.mcmc.TransformedTransitionKernel`
runs the sampler on z with `bijector = f` (the flow's base -> data direction, TFP's
forward) and reports states in the original space x; samples stay exact (the flow
only preconditions), however good or bad the fit.

```python
posterior = tff.inference.neutra_sample(
    target_log_prob_fn, model, num_results=500, num_chains=4, seed=1)
posterior.samples            # [500, 4, *event_shape], in the original space
tfp.mcmc.potential_scale_reduction(posterior.samples)   # R-hat over the 4 chains
```

Each NUTS step costs its leapfrog steps, each one target gradient and one flow pass
forward plus its log-det (a coupling or inverse-autoregressive flow: one network pass;
a masked autoregressive flow would need D passes per leapfrog).
"""

import typing

import tensorflow as tf
import tensorflow_probability as tfp

from tfp_flows.numerics import probes

__all__ = ["NeuTraResult", "neutra_sample"]

tfb = tfp.bijectors
tfd = tfp.distributions


class NeuTraResult(typing.NamedTuple):
  """What `neutra_sample` returns.

  Attributes:
    samples: `[num_results, num_chains, *event_shape]` states in the original space.
    target_log_prob: `[num_results, num_chains]` log-density the sampler sees, the
      target pulled back to the latent z: `log p(f(z)) + log|det df/dz|`.
    step_size: the step size after adaptation (in the latent space).
    acceptance_rate: mean Metropolis acceptance probability over the kept steps.
    num_gradient_evaluations: leapfrog steps (one target gradient each) of the whole
      run, burn-in included, averaged over chains: the cost for ESS per gradient.
  """
  samples: tf.Tensor
  target_log_prob: tf.Tensor
  step_size: tf.Tensor
  acceptance_rate: tf.Tensor
  num_gradient_evaluations: tf.Tensor


def _flow_parts(flow):
  """(base, bijector) of a FlowModel or of a transformed distribution.

  A FlowModel trained by `ReverseKL` with a `constraining_bijector` approximates the
  target through that bijector, so it is appended: the chains then live on the target's
  support, as the fitted approximation does.
  """
  distribution = getattr(flow, "distribution", None)
  if not isinstance(flow, tfd.Distribution) and isinstance(distribution, tfd.Distribution):
    constraining = getattr(getattr(flow, "objective", None), "constraining_bijector", None)
    flow = distribution  # a FlowModel: its live model.distribution
    if constraining is not None:
      return flow.distribution, tfb.Chain([constraining, flow.bijector])
  # tfd.TransformedDistribution builds a private subclass for non-composite bijectors
  # (ours hold callables), so check the parts rather than the class.
  if isinstance(flow, tfd.Distribution) and hasattr(flow, "bijector") and isinstance(
      getattr(flow, "distribution", None), tfd.Distribution):
    return flow.distribution, flow.bijector
  raise TypeError("neutra_sample takes a fitted flow as a tfp_flows.FlowModel or a "
                  f"tfd.TransformedDistribution (model.distribution); got {flow!r}.")


def neutra_sample(target_log_prob_fn, flow, num_results, num_chains=4,
                  num_burnin_steps=None, kernel="nuts", step_size=0.5,
                  num_leapfrog_steps=8, max_tree_depth=8, target_accept_prob=0.8,
                  initial_state=None, seed=None, jit_compile=True):
  """Samples `target_log_prob_fn` by HMC or NUTS preconditioned by a fitted flow.

  The chains start at draws of the flow (`z ~ base`, `x = f(z)`), run
  `num_burnin_steps` steps with dual-averaging step-size adaptation (Hoffman & Gelman,
  the first 80% of burn-in), then `num_results` kept steps.

  Args:
    target_log_prob_fn: unnormalised log-density of the target over x
      `[num_chains, *event_shape] -> [num_chains]`.
    flow: the fitted flow: a `tfp_flows.FlowModel` (with its `ReverseKL` objective's
      `constraining_bijector`, if any, appended), or a `tfd.TransformedDistribution`
      (e.g. `model.distribution`, or one with a stock bijector such as `tfb.Exp`
      appended for constrained parameters).
    num_results: kept steps per chain.
    num_chains: independent chains (their R-hat diagnoses convergence).
    num_burnin_steps: burn-in steps (at least 1), the first 80% adapting the step
      size; default `num_results`.
    kernel: "nuts" (`tfp.mcmc.NoUTurnSampler`) or "hmc" (`HamiltonianMonteCarlo` with
      `num_leapfrog_steps`).
    step_size: initial step size in the latent space (about 1 suits a good fit).
    num_leapfrog_steps: leapfrog steps per HMC step.
    max_tree_depth: NUTS' maximum tree depth (at most 2**depth - 1 leapfrogs a step).
    target_accept_prob: the acceptance rate step-size adaptation aims at.
    initial_state: optional `[num_chains, *event_shape]` start in the original space.
    seed: an int in [0, 2**31) or a `[2]` stateless seed; the same seed gives the same
      chains.
    jit_compile: compile the whole run with XLA.

  Returns:
    A `NeuTraResult`.

  Raises:
    TypeError: for a `flow` that is neither a `FlowModel` nor a TFP
      `TransformedDistribution`.
    ValueError: for an unknown `kernel` or non-positive counts, or a target that is not
      finite at the chains' starting points (chains started there could never move).
  """
  if kernel not in ("nuts", "hmc"):
    raise ValueError(f"kernel must be 'nuts' or 'hmc'; got {kernel!r}.")
  num_burnin_steps = num_results if num_burnin_steps is None else num_burnin_steps
  for name, value in (("num_results", num_results), ("num_chains", num_chains),
                      ("num_burnin_steps", num_burnin_steps)):
    if int(value) < 1:
      raise ValueError(f"{name} must be a positive int; got {value!r}.")
  num_burnin_steps = int(num_burnin_steps)
  base, bijector = _flow_parts(flow)
  latent_shape = base.event_shape
  if bijector.forward_min_event_ndims < latent_shape.rank:
    # TransformedTransitionKernel reduces the log-det over the bijector's minimal event
    # rank: an elementwise bijector (tfb.Identity, tfb.Exp) would give one log-det per
    # coordinate. An identity Reshape of the whole latent event fixes the rank.
    bijector = tfb.Chain([bijector, tfb.Reshape(latent_shape, latent_shape)])
  # TFP reads a Python int seed as a stateful one, which would not repeat the chains.
  seed = tfp.random.sanitize_seed(probes.stateless_seed(seed))
  init_seed, chain_seed = tfp.random.split_seed(seed)
  dtype = base.dtype
  if initial_state is None:
    initial_state = bijector.forward(base.sample(num_chains, seed=init_seed))
  initial_state = tf.convert_to_tensor(initial_state, dtype)
  start = tf.math.is_finite(target_log_prob_fn(initial_state))
  advice = ("where the chains could never move. The flow's draws lie outside the "
            "target's support, or the target fails there: append a constraining bijector "
            "to the flow (e.g. tfb.Exp() for positive parameters), pass the FlowModel "
            "itself rather than model.distribution if it was trained with "
            "ReverseKL(constraining_bijector=...), or pass initial_state=.")
  if tf.executing_eagerly():
    bad = int(tf.reduce_sum(tf.cast(~start, tf.int32)))
    if bad:
      raise ValueError(f"target_log_prob_fn is not finite at {bad} of the "
                       f"{start.shape[0]} chains' starting points, {advice}")
  else:  # called inside a user's tf.function: an assertion of the graph
    with tf.control_dependencies([tf.debugging.Assert(tf.reduce_all(start), [
        "target_log_prob_fn is not finite at some chains' starting points, " + advice])]):
      initial_state = tf.identity(initial_state)

  if kernel == "nuts":
    inner = tfp.mcmc.NoUTurnSampler(target_log_prob_fn, tf.cast(step_size, dtype),
                                    max_tree_depth=max_tree_depth)
  else:
    inner = tfp.mcmc.HamiltonianMonteCarlo(target_log_prob_fn, tf.cast(step_size, dtype),
                                           num_leapfrog_steps=num_leapfrog_steps)
  transformed = tfp.mcmc.TransformedTransitionKernel(inner, bijector)
  adaptive = tfp.mcmc.DualAveragingStepSizeAdaptation(
      transformed, num_adaptation_steps=int(0.8 * num_burnin_steps),
      target_accept_prob=tf.cast(target_accept_prob, dtype))

  def leapfrogs(results):
    inner_results = results.inner_results.inner_results
    if kernel == "nuts":
      return tf.cast(inner_results.leapfrogs_taken, tf.float64)
    return tf.fill(tf.shape(inner_results.log_accept_ratio),
                   tf.constant(float(num_leapfrog_steps), tf.float64))

  def trace(_, results):
    # NUTS reports its own results; HMC's sit inside a Metropolis-Hastings step.
    inner_results = results.inner_results.inner_results
    state_results = getattr(inner_results, "accepted_results", inner_results)
    return (state_results.target_log_prob,
            tf.exp(tf.minimum(inner_results.log_accept_ratio, 0.0)),
            results.new_step_size, leapfrogs(results))

  def run(initial_state, seed):
    burnin_seed, kept_seed = tfp.random.split_seed(seed)
    # Two calls so that burn-in is traced too: its leapfrogs count as gradients.
    burnin = tfp.mcmc.sample_chain(
        num_burnin_steps, initial_state, kernel=adaptive,
        trace_fn=lambda _, results: leapfrogs(results), seed=burnin_seed,
        return_final_kernel_results=True)
    kept = tfp.mcmc.sample_chain(
        num_results, burnin.all_states[-1], kernel=adaptive,
        previous_kernel_results=burnin.final_kernel_results, trace_fn=trace,
        seed=kept_seed)
    return kept.all_states, kept.trace, tf.reduce_sum(burnin.trace, axis=0)

  if jit_compile:
    run = tf.function(run, jit_compile=True)
  samples, (log_prob, accept, step_sizes, leaps), burnin_leaps = run(initial_state,
                                                                     chain_seed)
  total = tf.reduce_mean(burnin_leaps + tf.reduce_sum(leaps, axis=0))
  return NeuTraResult(samples=samples, target_log_prob=log_prob,
                      step_size=step_sizes[-1], acceptance_rate=tf.reduce_mean(accept),
                      num_gradient_evaluations=total)
