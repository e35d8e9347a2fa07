"""Mixed precision policies are a clear error at construction, float32 layers still work."""

import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_flows as tff

POLICIES = ["mixed_float16", "mixed_bfloat16"]

LAYERS = {
    "affine_coupling": lambda **d: tff.layers.AffineCoupling(hidden_units=(4,), **d),
    "additive_coupling": lambda **d: tff.layers.AdditiveCoupling(hidden_units=(4,), **d),
    "spline_coupling": lambda **d: tff.layers.SplineCoupling(hidden_units=(4,), **d),
    "affine_autoregressive": lambda **d: tff.layers.AffineAutoregressive(
        hidden_units=(4,), **d),
    "spline_autoregressive": lambda **d: tff.layers.SplineAutoregressive(
        hidden_units=(4,), **d),
    "conv1x1": lambda **d: tff.layers.InvertibleConv1x1(**d),
    "gaussian_prior": lambda **d: tff.layers.GaussianPrior(num_classes=3, **d),
    "dequantize": lambda **d: tff.layers.Dequantize(**d),
    "permute": lambda **d: tff.layers.Permute(**d),
    "squeeze": lambda **d: tff.layers.Squeeze(**d),
    "factor_out": lambda **d: tff.layers.FactorOut([], **d),
    "flow_chain": lambda **d: tff.layers.FlowChain([], **d),
}


def _message(policy):
  return (rf"does not support the mixed precision policy '{policy}': flow layers "
          r"compute in float32 or float64\. Pass dtype='float32'")


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_mixed_policy_argument_is_rejected_at_construction(name, policy):
  with pytest.raises(ValueError, match=_message(policy)):
    LAYERS[name](dtype=policy)


def test_global_mixed_policy(global_policy):
  # Under a global mixed policy a flow is rejected when it is built, with the fix in the
  # message; float32 flow layers (the fix) then work next to mixed layers.
  with pytest.raises(ValueError, match=_message(global_policy)):
    tff.FlowModel([tff.layers.AffineCoupling(hidden_units=(4,))], [2])
  coupling = tff.layers.AffineCoupling(hidden_units=(4,), dtype="float32")
  chain = tff.layers.FlowChain([coupling, tff.layers.Permute(dtype="float32")],
                               dtype="float32")
  x = np.array([[0.5, -1.0], [2.0, 0.25]], "float32")
  chain(x)
  assert all(w.dtype == "float32" for w in chain.weights)
  for weight in coupling.trainable_weights:
    weight.assign(np.full(weight.shape, 0.1, "float32"))
  z, ildj = chain(x)
  assert z.dtype == tf.float32 and ildj.dtype == tf.float32
  base = tfp.distributions.Sample(tfp.distributions.Normal(0.0, 1.0), [2])
  log_prob = base.log_prob(z) + ildj
  reference = tfp.distributions.TransformedDistribution(base, chain.bijector).log_prob(x)
  np.testing.assert_allclose(log_prob.numpy(), reference.numpy(), rtol=1e-6)
  assert np.abs(ildj.numpy()).max() > 1e-3  # the coupling is not the identity
  # The other layers of the model keep the mixed policy.
  assert keras.layers.Dense(2).compute_dtype == global_policy.split("_")[1]


def test_flow_model_under_a_global_mixed_policy(global_policy):
  # The fix the message gives works for models too: a float32 FlowModel of float32
  # layers builds under the mixed policy (its internal chain follows its layers' dtype)
  # and gives the float32 model's log-density under XLA; a FlowModel left at the mixed
  # policy is refused (Keras would round its inputs to 16 bits before the flow).
  layers = [tff.layers.AffineCoupling(hidden_units=(4,), dtype="float32"),
            tff.layers.Permute(dtype="float32")]
  with pytest.raises(ValueError, match=rf"FlowModel does not support the mixed precision "
                                       rf"policy '{global_policy}'.*dtype='float32'"):
    tff.FlowModel(layers, [2])
  model = tff.FlowModel(layers, [2], dtype="float32")
  x = np.array([[0.5, -1.0], [2.0, 0.25]], "float32")
  model(x)
  for weight in layers[0].trainable_weights:
    weight.assign(np.full(weight.shape, 0.1, "float32"))
  assert all(w.dtype == "float32" for w in model.weights)
  log_prob = tf.function(model.log_prob, jit_compile=True)(x)
  keras.mixed_precision.set_global_policy("float32")
  reference = tff.FlowModel([tff.layers.AffineCoupling(hidden_units=(4,)),
                             tff.layers.Permute()], [2])
  reference(x)
  for weight in reference.flow_layers[0].trainable_weights:
    weight.assign(np.full(weight.shape, 0.1, "float32"))
  expected = reference.log_prob(x).numpy()
  assert log_prob.dtype == tf.float32
  np.testing.assert_allclose(log_prob.numpy(), expected, rtol=1e-6)
  assert np.abs(expected - tfp.distributions.Normal(0.0, 1.0).log_prob(x).numpy().sum(-1)
                ).max() > 1e-3  # the coupling is not the identity


if __name__ == "__main__":
  # `main` of this file's py_test: under `bazel test` run the tests, not just the import.
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
