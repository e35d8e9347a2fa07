"""One contract test over every layer in tfp_flows.layers (STYLE.md point 6, second tier).

Each case puts one layer in a `tff.FlowModel` and checks: config round trip, `.keras`
save/load, `.bijector` is a TFP bijector and agrees with what the layer's call returns,
`model.log_prob == model.distribution.log_prob` (Dequantize: evaluated at the bin centre
`x + 1/2`), the weights are tracked and every trainable weight gets a finite, non-zero
gradient, and one `fit` step runs and logs the pre-step NLL.

Zero-initialised last conditioner layers make the gradients of the earlier conditioner
layers exactly zero at initialisation (the output does not depend on them yet), so the
gradient check first perturbs every trainable weight: then a zero gradient would mean a
weight that does not reach `log_prob`, and a `None` one a weight that is not connected.
"""

import dataclasses
import math
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_flows as tff
from tfp_flows.bijectors import conditioning

VECTOR = [3]
IMAGE = [4, 4, 2]
BATCH = 6


@dataclasses.dataclass
class Case:
  name: str
  make: object            # () -> list of flow layers
  event_shape: list
  num_trainable: int      # trainable weight tensors the model must track
  latent_shape: list = None  # defaults to event_shape
  num_classes: int = None  # class-conditional: context = int labels, shape []
  context_size: int = None  # conditional on a float context vector of this size
  discrete: int = 0       # num_bits of Dequantize: integer data, log_prob at x + 1/2
  train_equals_eval: bool = True  # no training-time behaviour (data init, noise)


def _coupling(cls, **kwargs):
  return lambda: [cls(hidden_units=(8,), hidden_channels=8, **kwargs)]


# MLP with one hidden layer: 2 stacked [fan_in + 1, units] weights (4 tensors, kernels and
# biases, with conditioner_layout="dense"); GlowConvNet: 3 convolutions, 6 tensors.
CASES = [
    Case("act_norm_vector", lambda: [tff.layers.ActNorm()], VECTOR, 2,
         train_equals_eval=False),
    Case("act_norm_image", lambda: [tff.layers.ActNorm()], IMAGE, 2,
         train_equals_eval=False),
    Case("conv1x1_lu", lambda: [tff.layers.InvertibleConv1x1(lu=True, seed=3)], IMAGE, 3),
    Case("conv1x1_plain", lambda: [tff.layers.InvertibleConv1x1(lu=False, seed=3)],
         IMAGE, 1),
    Case("conv1x1_lu_vector", lambda: [tff.layers.InvertibleConv1x1(lu=True)], VECTOR, 3),
]
for _scale in ("sigmoid", "exp"):
  for _mask in ("half", "checkerboard"):
    _reverse = _mask == "checkerboard"
    for _kind, _shape, _count in (("vector", VECTOR, 2), ("image", IMAGE, 6)):
      CASES.append(Case(f"affine_{_scale}_{_mask}_{_kind}",
                        _coupling(tff.layers.AffineCoupling, scale=_scale, mask=_mask,
                                  reverse=_reverse), _shape, _count))
CASES += [
    Case("affine_conditional_vector",
         _coupling(tff.layers.AffineCoupling, conditional=True), VECTOR, 2,
         context_size=2),
    Case("affine_dense_layout_vector",
         _coupling(tff.layers.AffineCoupling, conditioner_layout="dense"), VECTOR, 4),
    Case("affine_conditional_image",
         _coupling(tff.layers.AffineCoupling, conditional=True, mask="checkerboard"),
         IMAGE, 6, context_size=2),
    Case("affine_half_reverse_vector",  # odd split the other way: 2 kept, 1 moved
         _coupling(tff.layers.AffineCoupling, reverse=True), VECTOR, 2),
    Case("additive_half_vector", _coupling(tff.layers.AdditiveCoupling), VECTOR, 2),
    Case("additive_checkerboard_image",
         _coupling(tff.layers.AdditiveCoupling, mask="checkerboard", reverse=True),
         IMAGE, 6),
    Case("squeeze", lambda: [tff.layers.Squeeze(2)], IMAGE, 0, latent_shape=[2, 2, 8]),
    Case("dequantize", lambda: [tff.layers.Dequantize(num_bits=3, seed=1)], IMAGE, 0,
         discrete=3, train_equals_eval=False),
    Case("dequantize_linear",
         lambda: [tff.layers.Dequantize(num_bits=3, alpha=None, seed=1)], IMAGE, 0,
         discrete=3, train_equals_eval=False),
    Case("gaussian_prior_vector", lambda: [tff.layers.GaussianPrior()], VECTOR, 1),
    Case("gaussian_prior_image", lambda: [tff.layers.GaussianPrior()], IMAGE, 1),
    Case("gaussian_prior_classes_vector",
         lambda: [tff.layers.GaussianPrior(num_classes=3)], VECTOR, 1, num_classes=3),
    Case("gaussian_prior_classes_image",
         lambda: [tff.layers.GaussianPrior(num_classes=3)], IMAGE, 1, num_classes=3),
    # ActNorm 2 + LU conv 3 + coupling net 6.
    Case("glow_step", lambda: [tff.layers.GlowStep(hidden_channels=8)], IMAGE, 11,
         train_equals_eval=False),
    Case("glow_step_additive_plain_checkerboard",
         lambda: [tff.layers.GlowStep(hidden_channels=8, coupling="additive", lu=False,
                                      mask="checkerboard", reverse=True)],
         IMAGE, 9, train_equals_eval=False),
    # Split prior (one zero conv, 2 tensors) + the inner GlowStep (11) on [2, 2, 4].
    Case("factor_out",
         lambda: [tff.layers.FactorOut([tff.layers.Squeeze(2),
                                        tff.layers.GlowStep(hidden_channels=8)])],
         IMAGE, 13, train_equals_eval=False),
    Case("factor_out_conditional_prior",
         lambda: [tff.layers.FactorOut([tff.layers.Squeeze(2),
                                        tff.layers.GaussianPrior(num_classes=3)])],
         IMAGE, 3, num_classes=3),
    # A user's own chain: coupling net 2 + MADE 4 (registered, so `.keras` loads it).
    Case("flow_chain",
         lambda: [tff.layers.FlowChain([
             tff.layers.AffineCoupling(hidden_units=(8,)), tff.layers.Permute(),
             tff.layers.AffineAutoregressive(hidden_units=(8,), order="reversed")])],
         VECTOR, 6),
    # TarFlow: CausalTransformer with one layer: start token, positions, proj_in 2,
    # layer 12 (2 norms x 2, 4 dense x 2), out norm 2, proj_out 2 (+ class table).
    Case("tarflow_block",
         lambda: [tff.layers.TarFlowBlock(channels=8, num_layers=1, heads=2)], IMAGE, 20),
    Case("tarflow_block_classes_reverse",
         lambda: [tff.layers.TarFlowBlock(channels=8, num_layers=1, heads=2, reverse=True,
                                          num_classes=3, seed=1)],
         IMAGE, 21, num_classes=3, train_equals_eval=False),
    Case("noise_augmentation", lambda: [tff.layers.NoiseAugmentation(0.1, seed=1)], IMAGE,
         0, train_equals_eval=False),
    Case("permute_reversed", lambda: [tff.layers.Permute()], VECTOR, 0),
    Case("permute_random", lambda: [tff.layers.Permute("random", seed=2)], VECTOR, 0),
    Case("spline_coupling_vector", _coupling(tff.layers.SplineCoupling, num_bins=4),
         VECTOR, 2),
    Case("spline_coupling_circular_checkerboard_image",
         _coupling(tff.layers.SplineCoupling, num_bins=3, circular=True,
                   mask="checkerboard"), IMAGE, 6),
    Case("spline_coupling_conditional_vector",
         _coupling(tff.layers.SplineCoupling, conditional=True), VECTOR, 2,
         context_size=2),
    # Three blocks' MLPs stacked: 2 weights [3, fan_in + 1, units].
    Case("coupling_scan_spline",
         lambda: [tff.layers.CouplingScan(3, {"name": "rational_quadratic",
                                              "config": {"num_bins": 4}},
                                          hidden_units=(8,))], VECTOR, 2),
    Case("coupling_scan_affine_conditional",
         lambda: [tff.layers.CouplingScan(2, "affine", hidden_units=(8,), conditional=True)],
         VECTOR, 2, context_size=2),
    # MADE with one hidden layer: masked kernels and biases, 4 tensors (+2 context).
    Case("affine_autoregressive",
         lambda: [tff.layers.AffineAutoregressive(hidden_units=(8,))], VECTOR, 4),
    Case("affine_inverse_autoregressive",
         lambda: [tff.layers.AffineAutoregressive(hidden_units=(8,), order="random",
                                                  inverse_autoregressive=True)],
         VECTOR, 4),
    Case("spline_autoregressive",
         lambda: [tff.layers.SplineAutoregressive(num_bins=4, hidden_units=(8,),
                                                  order="reversed")], VECTOR, 4),
    Case("spline_autoregressive_conditional",
         lambda: [tff.layers.SplineAutoregressive(num_bins=4, hidden_units=(8,),
                                                  conditional=True)], VECTOR, 6,
         context_size=2),
    # Two spectral-norm Dense layers (kernel, bias) and one LipSwish slope: 5 tensors;
    # images: three spectral-norm convolutions and two LipSwish slopes, 8.
    # Training uses the Russian-roulette estimate, evaluation the exact log-det.
    Case("residual_block_vector",
         lambda: [tff.layers.ResidualBlock(hidden_units=(8,), seed=1)], VECTOR, 5,
         train_equals_eval=False),
    Case("residual_block_image",
         lambda: [tff.layers.ResidualBlock(hidden_units=(4,), seed=1)], IMAGE, 8,
         train_equals_eval=False),
    # Two concat-squash layers of 5 tensors each (kernel, bias, gate kernel and bias,
    # time bias). Training uses a Hutchinson trace, evaluation the exact one.
    Case("ffjord_vector",
         lambda: [tff.layers.FFJORD(hidden_units=(8,), rtol=1e-4, atol=1e-4, seed=1)],
         VECTOR, 10, train_equals_eval=False),
    Case("ffjord_image_rk4",
         lambda: [tff.layers.FFJORD(hidden_units=(4,), solver="rk4", num_steps=4,
                                    gradient="backprop", seed=1)],
         IMAGE, 10, train_equals_eval=False),
]


def _model(case):
  if case.num_classes is not None:
    return tff.FlowModel(case.make(), case.event_shape, context_shape=[],
                         context_dtype="int32")
  if case.context_size is not None:
    return tff.FlowModel(case.make(), case.event_shape, context_shape=[case.context_size])
  return tff.FlowModel(case.make(), case.event_shape)


def _data(case, seed=0):
  rng = np.random.default_rng(seed)
  shape = [BATCH, *case.event_shape]
  if case.discrete:
    x = rng.integers(0, 2 ** case.discrete, size=shape).astype("float32")
  else:
    x = rng.normal(size=shape).astype("float32")
  context = None
  if case.num_classes is not None:
    context = (np.arange(BATCH) % case.num_classes).astype("int32")
  if case.context_size is not None:
    context = rng.normal(size=[BATCH, case.context_size]).astype("float32")
  return x, context


def _perturb(model, seed=1, scale=0.1):
  rng = np.random.default_rng(seed)
  for weight in model.trainable_weights:
    value = keras.ops.convert_to_numpy(weight)
    weight.assign(value + scale * rng.normal(size=value.shape).astype(value.dtype))


def _distribution_log_prob(model, x, c):
  kwargs = {}
  if c is not None:
    kwargs = {"bijector_kwargs": conditioning.conditional_kwargs(
        model.bijector, tf.constant(c))}
  return model.distribution.log_prob(tf.constant(x), **kwargs).numpy()


def _types(flow_layers):
  for layer in flow_layers:
    yield type(layer)
    yield from _types(getattr(layer, "flow_layers", []))


def test_cases_cover_every_public_layer():
  abstract = {tff.layers.FlowLayer, tff.layers.FlowChain, tff.layers.CouplingLayer,
              tff.layers.AutoregressiveLayer}
  public = {getattr(tff.layers, name) for name in tff.layers.__all__} - abstract
  covered = {t for case in CASES for t in _types(case.make())}
  assert public - covered == set()


@pytest.fixture(autouse=True)
def _seed():
  keras.utils.set_random_seed(0)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_layer_contract(case, tmp_path):
  model = _model(case)
  x, c = _data(case)
  layer = model.flow_layers[0]

  # Weights are tracked by the model, and the latent shape is what the layer makes.
  assert len(model.trainable_weights) == case.num_trainable
  assert model.latent_shape == (case.latent_shape or case.event_shape)
  _perturb(model)

  # .bijector is a fresh TFP bijector; the layer's call is its inverse and ILDJ.
  assert isinstance(layer.bijector, tfp.bijectors.Bijector)
  assert isinstance(model.bijector, tfp.bijectors.Bijector)
  assert layer.bijector is not layer.bijector
  context = None if c is None else tf.constant(c)
  kwargs = conditioning.conditional_kwargs(layer.bijector, context)
  centred = x + 0.5 if case.discrete else x
  z, ildj = layer(tf.constant(x), context=context, training=False)
  np.testing.assert_allclose(z.numpy(), layer.bijector.inverse(centred, **kwargs).numpy(),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(
      ildj.numpy(),
      layer.bijector.inverse_log_det_jacobian(
          centred, event_ndims=len(case.event_shape), **kwargs).numpy(),
      rtol=1e-5, atol=1e-5)
  assert ildj.shape == [BATCH]
  x_back = model.bijector.forward(
      tf.constant(z.numpy()),
      **conditioning.conditional_kwargs(model.bijector, context)).numpy()
  np.testing.assert_allclose(x_back, centred, rtol=1e-4, atol=1e-4)

  # FlowModel's walk gives the numbers of tfd.TransformedDistribution.
  log_prob = model.log_prob(x, context=c).numpy()
  assert log_prob.shape == (BATCH,) and np.all(np.isfinite(log_prob))
  np.testing.assert_allclose(log_prob, _distribution_log_prob(model, centred, c),
                             rtol=1e-5, atol=1e-4)

  # Config round trip: same config, and the same function once given the same weights.
  for flow_layer in model.flow_layers:
    clone = type(flow_layer).from_config(flow_layer.get_config())
    assert clone.get_config() == flow_layer.get_config()
  rebuilt = tff.FlowModel.from_config(model.get_config())
  assert rebuilt.get_config() == model.get_config()
  rebuilt.set_weights(model.get_weights())
  np.testing.assert_allclose(rebuilt.log_prob(x, context=c).numpy(), log_prob,
                             rtol=1e-6, atol=1e-6)

  # .keras save/load keeps every weight and the log-density.
  path = str(tmp_path / "model.keras")
  model.save(path)
  loaded = keras.models.load_model(path)
  assert isinstance(loaded, tff.FlowModel)
  assert type(loaded.flow_layers[0]) is type(layer)
  assert [tuple(w.shape) for w in loaded.weights] == [tuple(w.shape) for w in model.weights]
  for saved, restored in zip(model.weights, loaded.weights):
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(restored),
                                  keras.ops.convert_to_numpy(saved))
  np.testing.assert_allclose(loaded.log_prob(x, context=c).numpy(), log_prob,
                             rtol=1e-6, atol=1e-6)

  # Every trainable weight reaches -mean(log_prob): finite, non-zero gradients.
  with tf.GradientTape() as tape:
    loss = -tf.reduce_mean(model(tf.constant(x), context=context, training=False))
  gradients = tape.gradient(loss, model.trainable_variables)
  for weight, gradient in zip(model.trainable_variables, gradients):
    assert gradient is not None, weight.path
    gradient = tf.convert_to_tensor(gradient).numpy()
    assert np.all(np.isfinite(gradient)), weight.path
    assert np.abs(gradient).max() > 0, weight.path

  # One fit step runs, logs the NLL of the batch it trained on and moves the weights.
  before = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
  # Eager, to keep 30 cases fast; graph and XLA `fit` run in flow_test, act_norm_test
  # and glow_test over the same layers.
  model.compile(optimizer=keras.optimizers.Adam(1e-2), run_eagerly=True)
  fit_args = (x,) if c is None else (x, c)
  history = model.fit(*fit_args, batch_size=BATCH, epochs=1, shuffle=False,
                      verbose=0).history
  nll = history["nll"][0]
  assert math.isfinite(nll)
  if case.train_equals_eval:
    np.testing.assert_allclose(nll, -log_prob.mean(), rtol=1e-5)
  if len(case.event_shape) == 3:
    np.testing.assert_allclose(history["bits_per_dim"][0],
                               nll / (math.log(2.0) * math.prod(case.event_shape)),
                               rtol=1e-6)
  else:
    assert "bits_per_dim" not in history
  for old, weight in zip(before, model.trainable_weights):
    assert not np.array_equal(old, keras.ops.convert_to_numpy(weight)), weight.path
  assert np.all(np.isfinite(model.log_prob(x, context=c).numpy()))


def _functional_model(case, layer):
  """A user's functional Keras model `(x[, context]) -> (z, ildj)` around `layer`."""
  x_in = keras.Input(case.event_shape)
  if case.num_classes is not None:
    context_in = keras.Input((), dtype="int32")
  elif case.context_size is not None:
    context_in = keras.Input((case.context_size,))
  else:
    z, ildj = layer(x_in)
    return keras.Model(x_in, [z, ildj])
  z, ildj = layer(x_in, context=context_in)
  return keras.Model([x_in, context_in], [z, ildj])


def _functional_inputs(x, c):
  return tf.constant(x) if c is None else [tf.constant(x), tf.constant(c)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_layer_in_a_functional_model(case):
  # A symbolic call on keras.Input goes through compute_output_shape, whose argument
  # names Keras matches to call's; the outputs must be the eager call's numbers.
  layer = case.make()[0]
  model = _functional_model(case, layer)
  x, c = _data(case)
  assert layer.built
  _perturb(model, seed=2)
  context = None if c is None else tf.constant(c)
  z, ildj = model(_functional_inputs(x, c))
  eager_z, eager_ildj = layer(tf.constant(x), context=context, training=False)
  assert tuple(z.shape) == (BATCH, *(case.latent_shape or case.event_shape))
  assert tuple(ildj.shape) == (BATCH,)
  np.testing.assert_allclose(z.numpy(), eager_z.numpy(), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(ildj.numpy(), eager_ildj.numpy(), rtol=1e-6, atol=1e-5)
  assert np.all(np.isfinite(ildj.numpy()))


@keras.saving.register_keras_serializable(package="tfp_flows_tests")
class _UserModel(keras.Model):
  """A user's subclassed model that builds its flow layer in `build`, as Keras advises."""

  def __init__(self, layer_config, with_context=False, **kwargs):
    super().__init__(**kwargs)
    self.layer_config = layer_config
    self.with_context = with_context
    self.flow_layer = keras.saving.deserialize_keras_object(layer_config)

  def build(self, input_shape):
    if self.with_context:
      self.flow_layer.build(*input_shape)
    else:
      self.flow_layer.build(input_shape)

  def call(self, inputs):
    if self.with_context:
      return self.flow_layer(inputs[0], context=inputs[1])
    return self.flow_layer(inputs)

  def get_config(self):
    return {**super().get_config(), "layer_config": self.layer_config,
            "with_context": self.with_context}


def _assert_round_trip(model, inputs, path):
  """`model` saved to `.keras` and loaded computes the same numbers with the same weights."""
  z, ildj = model(inputs)
  model.save(path)
  loaded = keras.models.load_model(path)
  assert len(loaded.weights) == len(model.weights)
  for saved, restored in zip(model.weights, loaded.weights):
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(restored),
                                  keras.ops.convert_to_numpy(saved), err_msg=saved.path)
  loaded_z, loaded_ildj = loaded(inputs)
  np.testing.assert_array_equal(loaded_z.numpy(), z.numpy())
  np.testing.assert_array_equal(loaded_ildj.numpy(), ildj.numpy())


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_keras_round_trip_in_user_models(case, tmp_path):
  # Keras' standard build path (symbolic call, build_from_config on loading) must create
  # every weight, conditioner networks included, or `.keras` loading leaves the saved
  # values unrestored. The weights are perturbed first: the zero-initialised last
  # conditioner layer would hide an unrestored network.
  x, c = _data(case)
  inputs = _functional_inputs(x, c)
  functional = _functional_model(case, case.make()[0])
  assert len(functional.trainable_weights) == case.num_trainable
  _perturb(functional, seed=3, scale=0.3)
  _assert_round_trip(functional, inputs, str(tmp_path / "functional.keras"))

  layer = case.make()[0]
  subclassed = _UserModel(keras.saving.serialize_keras_object(layer),
                          with_context=c is not None)
  if c is None:
    subclassed.build((None, *case.event_shape))
  else:
    subclassed.build([(None, *case.event_shape), (None, *c.shape[1:])])
  assert len(subclassed.trainable_weights) == case.num_trainable
  _perturb(subclassed, seed=4, scale=0.3)
  _assert_round_trip(subclassed, inputs, str(tmp_path / "subclassed.keras"))


if __name__ == "__main__":
  # `main` of this file's py_test: under `bazel test` run the tests, not just the import.
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
