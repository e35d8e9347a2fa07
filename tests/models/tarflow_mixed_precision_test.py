"""TarFlow under mixed precision: the flow layers' clear error, and what works next to it.

The library's convention (`FlowLayer`): flow layers refuse a mixed policy at construction
with the fix in the message, and float32 flow layers work inside a model whose other
layers keep the mixed policy. For TarFlow that means the preset and its layers raise
that error, float32 TarFlow layers give the float32 model's log-density and gradients under
a global mixed policy (under XLA), and the `CausalTransformer` conditioner, a net
rather than a flow layer, computes in the policy's 16-bit type with float32 weights in
its parallel pass and in its key/value-cache decoding alike.
"""

import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfp_flows as tff

POLICIES = ["mixed_float16", "mixed_bfloat16"]
IMAGE = [4, 4, 1]
TINY = {"channels": 8, "heads": 2, "num_layers": 1, "num_classes": 3}


def _message(policy):
  return (rf"does not support the mixed precision policy '{policy}': flow layers "
          r"compute in float32 or float64\. Pass dtype='float32'")


@pytest.mark.parametrize("policy", POLICIES)
def test_tarflow_layers_reject_a_mixed_policy_argument(policy):
  with pytest.raises(ValueError, match="TarFlowBlock " + _message(policy)):
    tff.layers.TarFlowBlock(dtype=policy, **TINY)
  with pytest.raises(ValueError, match="NoiseAugmentation " + _message(policy)):
    tff.layers.NoiseAugmentation(dtype=policy)


def test_preset_under_a_global_mixed_policy_is_the_flow_layers_error(global_policy):
  with pytest.raises(ValueError, match=_message(global_policy)):
    tff.models.TarFlow(IMAGE, channels=8, heads=2, num_blocks=2, layers_per_block=1)


def _chain(dtype=None):
  kwargs = {} if dtype is None else {"dtype": dtype}
  layers = [tff.layers.Dequantize(num_bits=5, alpha=None, **kwargs),
            tff.layers.NoiseAugmentation(noise_std=0.1, seed=1, **kwargs),
            tff.layers.TarFlowBlock(**TINY, seed=2, **kwargs),
            tff.layers.TarFlowBlock(**TINY, reverse=True, seed=3, **kwargs)]
  chain = tff.layers.FlowChain(layers, **kwargs)
  chain.build((None, *IMAGE))
  return chain


def _log_prob_and_gradients(chain, x, labels):
  """Evaluation-mode log-density under N(0, I), and its gradients (XLA)."""

  @tf.function(jit_compile=True)
  def run(x, labels):
    with tf.GradientTape() as tape:
      z, ildj = chain(x, context=labels, training=False)
      log_prob = tf.reduce_sum(-0.5 * z**2 - 0.5 * np.log(2 * np.pi), [1, 2, 3]) + ildj
      mean = tf.reduce_mean(log_prob)
    gradients = tape.gradient(mean, chain.trainable_weights)
    # The class table's gradient is IndexedSlices (a gather); compare it densely.
    return log_prob, [tf.convert_to_tensor(g) for g in gradients]

  return run(x, labels)


def test_float32_tarflow_layers_next_to_a_global_mixed_policy(global_policy):
  # The reference: the same layers and weights built under the float32 policy.
  keras.mixed_precision.set_global_policy("float32")
  reference = _chain()
  rng = np.random.default_rng(1)
  values = [keras.ops.convert_to_numpy(w) + 0.3 * rng.normal(size=w.shape).astype("float32")
            for w in reference.trainable_weights]
  for weight, value in zip(reference.trainable_weights, values):
    weight.assign(value)
  rng = np.random.default_rng(0)
  x = tf.constant(rng.integers(0, 32, size=[6, *IMAGE]).astype("float32"))
  labels = tf.constant([0, 1, 2, -1, 1, 0])
  expected, expected_gradients = _log_prob_and_gradients(reference, x, labels)
  unlabelled, _ = _log_prob_and_gradients(reference, x, -tf.ones_like(labels))
  # The blocks are far from the identity and read the labels.
  assert np.abs(expected.numpy() - unlabelled.numpy()).max() > 0.1

  keras.mixed_precision.set_global_policy(global_policy)
  chain = _chain(dtype="float32")
  for weight, value in zip(chain.trainable_weights, values):
    weight.assign(value)
  assert {w.dtype for w in chain.weights} == {"float32"}
  for block in chain.flow_layers[2:]:
    net = block.net
    sublayers = [net, net.proj_in, *net.qkvs, *net.mlp_ins, net.out_norm, net.proj_out]
    assert {layer.compute_dtype for layer in sublayers} == {"float32"}
  # Other layers keep the mixed policy.
  assert keras.layers.Dense(2).compute_dtype == global_policy.split("_")[1]
  z, ildj = chain(x, context=labels, training=False)
  assert z.dtype == tf.float32 and ildj.dtype == tf.float32
  log_prob, gradients = _log_prob_and_gradients(chain, x, labels)
  np.testing.assert_allclose(log_prob.numpy(), expected.numpy(), rtol=1e-6)
  assert len(gradients) == len(expected_gradients) == len(values)
  for gradient, reference_gradient in zip(gradients, expected_gradients):
    np.testing.assert_allclose(gradient.numpy(), reference_gradient.numpy(), rtol=1e-5,
                               atol=1e-6)
  # Sampling (the KV-cache loop) inverts the float32 chain.
  kwargs = tff.bijectors.conditional_kwargs(chain.bijector, labels)
  np.testing.assert_allclose(chain.bijector.forward(z, **kwargs).numpy(), x.numpy() + 0.5,
                             atol=2e-3)


@pytest.mark.parametrize("policy", POLICIES)
def test_causal_transformer_computes_in_the_policys_16_bit_type(policy):
  # Before the fix, the key/value-cache `step` read the start token, positions and class
  # table as float32 (outside `__call__` Keras does not cast them) and failed on adding
  # them to the float16 activations.
  compute = policy.split("_")[1]
  kwargs = {"num_tokens": 5, "token_size": 3, "channels": 8, "heads": 2, "num_layers": 2,
            "num_classes": 3}
  keras.utils.set_random_seed(0)
  net = tff.nets.CausalTransformer(**kwargs, dtype=policy)
  net.build((None, 5, 3))
  reference = tff.nets.CausalTransformer(**kwargs, dtype="float32")
  reference.build((None, 5, 3))
  rng = np.random.default_rng(2)
  for weight, twin in zip(net.weights, reference.weights):
    value = 0.3 * rng.normal(size=weight.shape).astype("float32")
    weight.assign(value)
    twin.assign(value)
  assert {w.dtype for w in net.weights} == {"float32"}
  tokens = tf.constant(rng.normal(size=[4, 5, 3]).astype("float32"))
  labels = tf.constant([0, 2, -1, 1])

  parallel = net(tokens, labels)
  assert parallel.dtype == compute
  expected = reference(tokens, labels).numpy()
  assert np.abs(expected).max() > 0.5
  # 16-bit round-off through two layers (measured 8e-4 in float16, 6e-3 in bfloat16,
  # whose epsilons are 1e-3 and 8e-3); the decoder repeats the parallel pass to one ulp.
  atol = {"float16": 4e-3, "bfloat16": 3e-2}[compute]
  ulp = {"float16": 1e-3, "bfloat16": 8e-3}[compute]
  np.testing.assert_allclose(parallel.numpy().astype("float32"), expected, atol=atol)

  def decode(tokens, labels):
    cache, rows = net.initial_cache(4, labels), []
    for index in range(5):
      params, cache = net.step(cache, tf.constant(index), tokens[:, max(index - 1, 0)],
                               labels)
      rows.append(params)
    return tf.stack(rows, axis=1)

  for run in (decode, tf.function(decode, jit_compile=True)):
    decoded = run(tokens, labels)
    assert decoded.dtype == compute
    np.testing.assert_allclose(decoded.numpy().astype("float32"),
                               parallel.numpy().astype("float32"), atol=ulp)


if __name__ == "__main__":
  # `main` of this file's py_test: under `bazel test` run the tests, not just the import.
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
