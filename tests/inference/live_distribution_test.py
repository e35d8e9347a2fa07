"""`model.distribution` is a live TFP object: TFP's own optimisation loops train the model.

Before this, `model.distribution.trainable_variables` was `()`, so
`tfp.vi.fit_surrogate_posterior(target, model.distribution, ...)` ran and trained
nothing, and ActNorm / InvertibleConv1x1 bijectors built from variables froze them
into constants (no gradient, no variables in their composite-tensor form).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_flows as tff

tfb = tfp.bijectors
tfd = tfp.distributions

TARGET = tfd.MultivariateNormalTriL(
    [1.0, -2.0, 0.5], tf.linalg.cholesky([[2.0, 0.6, 0.0], [0.6, 1.0, 0.3],
                                          [0.0, 0.3, 0.5]]))


def _model():
  """Every vector layer family that samples differentiably."""
  keras.utils.set_random_seed(0)
  return tff.FlowModel([
      tff.layers.ActNorm(data_init=False),
      tff.layers.AffineCoupling(hidden_units=(8,), scale="exp"),
      tff.layers.InvertibleConv1x1(lu=True, seed=1),
      tff.layers.AdditiveCoupling(hidden_units=(8,), reverse=True),
      tff.layers.Permute(),
      tff.layers.SplineCoupling(num_bins=4, hidden_units=(8,)),
      tff.layers.AffineAutoregressive(hidden_units=(8,), inverse_autoregressive=True),
      tff.layers.GaussianPrior(),
  ], event_shape=[3])


def _values(model):
  return [keras.ops.convert_to_numpy(w).copy() for w in model.trainable_weights]


@pytest.mark.parametrize("jit_compile", [False, True], ids=["eager", "xla"])
def test_fit_surrogate_posterior_trains_every_weight(jit_compile):
  model = _model()
  distribution = model.distribution
  assert ({v.ref() for v in distribution.trainable_variables} ==
          {w.value.ref() for w in model.trainable_weights})
  before = _values(model)
  losses = tfp.vi.fit_surrogate_posterior(
      TARGET.log_prob, distribution, tf.optimizers.Adam(1e-2), num_steps=30,
      sample_size=16, seed=(3, 4), jit_compile=jit_compile).numpy()
  after = _values(model)
  for weight, old, new in zip(model.trainable_weights, before, after):
    assert np.max(np.abs(new - old)) > 1e-4, f"{weight.path} did not change"
  # The model itself moved: the reverse KL dropped (mean of the first vs last 5 steps).
  assert losses[-5:].mean() < losses[:5].mean() - 0.5
  np.testing.assert_allclose(model.log_prob(tf.zeros([1, 3])),
                             distribution.log_prob(tf.zeros([1, 3])), rtol=1e-5)


def test_xla_equals_eager():
  # Stateless normal draws are not the same numbers under XLA (TF's "auto_select"
  # algorithm differs), so the comparison fixes the base draws: the reverse-KL loss of
  # x = bijector.forward(z) and its gradients for every variable, eager and XLA.
  # Perturbed weights, so that no gradient is exactly zero.
  model = _model()
  rng = np.random.default_rng(0)
  for weight in model.trainable_weights:
    weight.assign_add(0.1 * rng.normal(size=weight.shape).astype("float32"))
  distribution = model.distribution
  variables = distribution.trainable_variables
  z = tf.constant(rng.normal(size=[16, 3]).astype("float32"))

  def loss_and_gradients(z):
    with tf.GradientTape() as tape:
      x = distribution.bijector.forward(z)
      loss = tf.reduce_mean(distribution.log_prob(x) - TARGET.log_prob(x))
    return loss, tape.gradient(loss, variables)

  eager = loss_and_gradients(z)
  xla = tf.function(loss_and_gradients, jit_compile=True)(z)
  np.testing.assert_allclose(xla[0], eager[0], rtol=1e-5)
  for a, b in zip(xla[1], eager[1]):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
  assert all(np.any(g.numpy() != 0) for g in eager[1])


def test_a_build_after_a_weight_update_is_not_served_tfps_cache():
  # TFP shares a cache among equal bijectors, keyed by the input tensor: builds that
  # held the same variables compared equal, so a tensor drawn or mapped before the update
  # got the old weights' values, with no gradient to them.
  model = _model()
  held_x = model.distribution.sample(3, seed=(1, 2))
  held_z = tf.constant([[0.5, -1.0, 0.3]])
  model.bijector.forward(held_z)
  for weight in model.trainable_weights:
    weight.assign(weight + 0.3)
  copy_x, copy_z = tf.constant(held_x.numpy()), tf.constant(held_z.numpy())
  np.testing.assert_allclose(model.distribution.log_prob(held_x).numpy(),
                             model.distribution.log_prob(copy_x).numpy(), rtol=1e-6)
  np.testing.assert_allclose(model.bijector.forward(held_z).numpy(),
                             model.bijector.forward(copy_z).numpy(), rtol=1e-6)
  with tf.GradientTape() as tape:
    y = tf.reduce_sum(model.bijector.forward(held_z))
  gradients = tape.gradient(y, model.trainable_variables)
  assert sum(g is not None for g in gradients) >= len(gradients) - 1  # all but the prior's
  # Within one build, TFP's cache still serves the inverse of a forward output.
  bijector = model.bijector
  x = bijector.forward(held_z)
  assert bijector.inverse(x) is held_z


def test_user_loop_over_distribution_variables():
  model = _model()
  distribution = model.distribution
  variables = distribution.trainable_variables
  optimizer = tf.optimizers.Adam(1e-2)

  @tf.function(jit_compile=True)
  def step(seed):
    with tf.GradientTape() as tape:
      x = distribution.sample(32, seed=seed)
      loss = tf.reduce_mean(distribution.log_prob(x) - TARGET.log_prob(x))
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    return loss

  before = _values(model)
  losses = [step(tf.constant([i, 7])).numpy() for i in range(30)]
  changed = [np.max(np.abs(a - b)) > 1e-4 for a, b in zip(before, _values(model))]
  assert all(changed)
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5


def _act_norm_variables(dtype=tf.float64):
  return (tf.Variable(tf.constant([0.5, -1.0], dtype)),
          tf.Variable(tf.constant([0.2, -0.3], dtype)))


@pytest.mark.parametrize("wrap", ["plain", "chain", "invert"])
def test_composite_tensor_keeps_variables(wrap):
  loc, log_scale = _act_norm_variables()
  bijector = tff.bijectors.ActNorm(loc, log_scale)
  if wrap == "chain":
    bijector = tfb.Chain([tfb.Shift(tf.constant(1.0, tf.float64)), bijector])
  elif wrap == "invert":
    bijector = tfb.Invert(bijector)
  # The composite-tensor components are the variables themselves, not their values.
  components = tf.nest.flatten(bijector, expand_composites=True)
  variables = [c for c in components if isinstance(c, tf.Variable)]
  assert {v.ref() for v in variables} == {loc.ref(), log_scale.ref()}
  assert {v.ref() for v in bijector.trainable_variables} == {loc.ref(), log_scale.ref()}

  @tf.function(jit_compile=True)
  def forward(b, x):
    return b.forward(x)

  x = tf.constant([[1.0, 2.0]], tf.float64)
  with tf.GradientTape() as tape:
    y = forward(bijector, x)
  gradients = tape.gradient(y, [loc, log_scale])
  assert all(g is not None for g in gradients)

  def expected(loc, log_scale):
    z = x * np.exp(log_scale) + loc
    if wrap == "chain":
      z = z + 1.0
    if wrap == "invert":
      z = (x - loc) * np.exp(-log_scale)
    return z

  np.testing.assert_allclose(y, expected(loc.numpy(), log_scale.numpy()), rtol=1e-12)
  # Live: the same bijector (and the same traced function) reads assigned values.
  loc.assign([2.0, 3.0])
  np.testing.assert_allclose(forward(bijector, x), expected(loc.numpy(), log_scale.numpy()),
                             rtol=1e-12)


def test_invertible_conv1x1_keeps_keras_variables():
  layer = tff.layers.InvertibleConv1x1(lu=True, seed=1)
  model = tff.FlowModel([layer], event_shape=[3])
  bijector = layer.bijector
  x = tf.constant([[0.3, -0.2, 1.0]])
  with tf.GradientTape() as tape:
    y = bijector.forward(x)
  gradients = tape.gradient(y, bijector.trainable_variables)
  assert len(gradients) == 3 and all(g is not None for g in gradients)
  layer.log_abs_diag.assign([1.0, 1.0, 1.0])
  # The bijector built before the assignment reads the new value.
  np.testing.assert_allclose(bijector.forward_log_det_jacobian(x, event_ndims=1), 3.0,
                             rtol=1e-6)
  del model


def test_joint_distribution_component():
  model = _model()
  rng = np.random.default_rng(1)
  for weight in model.trainable_weights:
    weight.assign_add(0.1 * rng.normal(size=weight.shape).astype("float32"))
  joint = tfd.JointDistributionNamed({
      "x": model.distribution,
      "y": lambda x: tfd.Normal(tf.reduce_sum(x, -1), 1.0)})
  assert ({v.ref() for v in joint.trainable_variables} ==
          {w.value.ref() for w in model.trainable_weights})
  draw = joint.sample(4, seed=(1, 2))
  assert draw["x"].shape == (4, 3) and draw["y"].shape == (4,)
  # Fresh tensors: TFP's bijector cache would answer log_prob(sample) from the values
  # the sampling pass computed outside the tape.
  draw = {name: tf.constant(value.numpy()) for name, value in draw.items()}
  with tf.GradientTape() as tape:
    log_prob = joint.log_prob(draw)
  expected = model.log_prob(draw["x"]) + tfd.Normal(
      tf.reduce_sum(draw["x"], -1), 1.0).log_prob(draw["y"])
  np.testing.assert_allclose(log_prob, expected, rtol=1e-5, atol=1e-5)
  gradients = tape.gradient(log_prob, joint.trainable_variables)
  assert all(g is not None for g in gradients)


def _presets():
  return {
      "spline_coupling": lambda: tff.models.NeuralSplineFlow(
          event_shape=[3], num_layers=2, hidden_units=(8,), num_bins=4),
      "spline_autoregressive": lambda: tff.models.NeuralSplineFlow(
          event_shape=[3], num_layers=2, hidden_units=(8,), num_bins=4,
          autoregressive=True),
      # Spectrally normalised kernels, normalised when the bijector runs.
      "residual": lambda: tff.models.ResidualFlow(
          event_shape=[3], num_blocks=2, hidden_units=(8,)),
      # The learned end time T = sqrt_end_time^2, read when the ODE is solved.
      "ffjord_learned_end_time": lambda: tff.models.FFJORDFlow(
          event_shape=[2], hidden_units=(8,), learn_end_time=True, rtol=1e-6, atol=1e-6),
      "glow": lambda: tff.models.Glow([4, 4, 1], num_scales=1, steps_per_scale=2,
                                      hidden_channels=4, num_bits=3),
      "residual_image": lambda: tff.models.ResidualFlow(
          event_shape=[4, 4, 1], num_blocks=1, num_scales=1, hidden_units=(4,),
          num_bits=3),
      "tarflow": lambda: tff.models.TarFlow([4, 4, 1], patch_size=2, channels=8,
                                            num_blocks=2, layers_per_block=1, heads=2,
                                            num_bits=3),
  }


@pytest.mark.parametrize("name", sorted(_presets()))
def test_a_held_distribution_follows_later_weight_updates(name):
  """`d = model.distribution` taken once, as tfp.vi and user loops do, reads the
  weights of each call: every variable has a gradient, and after the weights change
  `d` agrees with a distribution built afresh. ResidualFlow's kernels and FFJORD's
  learned end time were read when `d` was built: no gradient and a stale density."""
  keras.utils.set_random_seed(0)
  model = _presets()[name]()
  rng = np.random.default_rng(1)
  shape = [5, *model.event_shape]
  x = (rng.integers(0, 8, size=shape) if model.is_image_model
       else rng.normal(size=shape)).astype("float32")
  held = model.distribution
  variables = held.trainable_variables
  assert {v.ref() for v in variables} == {w.value.ref() for w in model.trainable_weights}
  for weight in model.trainable_weights:  # away from the zero-initialised identity
    weight.assign_add(0.1 * rng.normal(size=weight.shape).astype("float32"))
  with tf.GradientTape() as tape:
    loss = -tf.reduce_mean(held.log_prob(x))
  missing = [v.name for v, g in zip(variables, tape.gradient(loss, variables)) if g is None]
  assert not missing, f"no gradient for {missing}"
  for weight in model.trainable_weights:
    weight.assign_add(0.1 * rng.normal(size=weight.shape).astype("float32"))
  fresh = model.distribution.log_prob(x).numpy()
  np.testing.assert_allclose(held.log_prob(x).numpy(), fresh, rtol=1e-5, atol=1e-5)


def _frozen_model():
  """`_model()` with three layers frozen the Keras way, and one conditioner network.

  Returns the model and the weights frozen (those that were trainable).
  """
  model = _model()
  layers = model.flow.flow_layers
  # ActNorm and InvertibleConv1x1 (parameters), a spline coupling (a network), and a
  # network inside a layer that stays trainable.
  frozen_layers = [layers[0], layers[2], layers[5], layers[1].net]
  frozen = [w for layer in frozen_layers for w in layer.trainable_weights]
  for layer in frozen_layers:
    layer.trainable = False
  return model, frozen


@pytest.mark.parametrize("jit_compile", [False, True], ids=["eager", "xla"])
def test_fit_surrogate_posterior_leaves_frozen_layers_as_they_are(jit_compile):
  # Keras' `layer.trainable = False` marks the Keras variables only; the tf.Variables
  # inside them, which TFP's tf.Module walk finds, stayed trainable, so tfp.vi trained
  # the frozen layers (and `fit` did not).
  model, frozen = _frozen_model()
  distribution = model.distribution
  assert ({v.ref() for v in distribution.trainable_variables} ==
          {w.value.ref() for w in model.trainable_weights})
  frozen_before = [w.numpy().copy() for w in frozen]
  before = _values(model)
  tfp.vi.fit_surrogate_posterior(
      TARGET.log_prob, distribution, tf.optimizers.Adam(1e-2), num_steps=10,
      sample_size=16, seed=(3, 4), jit_compile=jit_compile)
  for weight, old in zip(frozen, frozen_before):
    np.testing.assert_array_equal(weight.numpy(), old, err_msg=weight.path)
  for weight, old, new in zip(model.trainable_weights, before, _values(model)):
    assert np.max(np.abs(new - old)) > 1e-5, f"{weight.path} did not change"


def test_a_frozen_layer_is_still_read_live():
  # Frozen weights change by assignment or load_weights; a held distribution reads them
  # when called, eagerly and through a compiled function taking it as an argument.
  model, frozen = _frozen_model()
  distribution = model.distribution
  log_prob = tf.function(lambda d, x: d.log_prob(x), jit_compile=True)
  points = np.array([[0.3, -1.2, 0.8], [1.5, 0.1, -0.4]], np.float32)
  log_prob(distribution, tf.constant(points))
  rng = np.random.default_rng(2)
  for weight in frozen:
    weight.assign_add(0.1 * rng.normal(size=weight.shape).astype("float32"))
  # Fresh tensors: TFP's cache serves a held bijector's earlier results for a tensor
  # it has already seen.
  expected = model.log_prob(tf.constant(points)).numpy()
  np.testing.assert_allclose(distribution.log_prob(tf.constant(points)), expected, rtol=1e-5)
  np.testing.assert_allclose(log_prob(distribution, tf.constant(points)), expected, rtol=1e-5)


def test_freezing_after_the_distribution_was_built_takes_effect_and_unfreezing_too():
  model = _model()
  distribution = model.distribution
  act_norm = model.flow.flow_layers[0]
  act_norm.trainable = False
  held = {v.ref() for v in distribution.trainable_variables}
  assert act_norm.loc.value.ref() not in held
  with tf.GradientTape() as tape:
    loss = -tf.reduce_mean(distribution.log_prob(tf.ones([4, 3])))
  assert act_norm.loc.value.ref() not in {v.ref() for v in tape.watched_variables()}
  act_norm.trainable = True
  assert act_norm.loc.value.ref() in {v.ref() for v in distribution.trainable_variables}
  del loss


def test_a_layer_frozen_before_it_is_built_freezes_its_networks(tmp_path):
  # A .keras reload (or clone_model, or Coupling(trainable=False)) builds a frozen layer's
  # conditioner after the flag is set: the network stayed trainable, in fit and in TFP.
  # Whole layers only: Keras' .keras config does not record a network inside a layer
  # frozen directly (the layer builds it), for Keras' own layers either.
  model = _model()
  for i in (0, 2, 5):
    model.flow.flow_layers[i].trainable = False
  path = str(tmp_path / "frozen.keras")
  model.save(path)
  reloaded = keras.models.load_model(path)
  assert len(reloaded.trainable_weights) == len(model.trainable_weights)
  assert ({v.ref() for v in reloaded.distribution.trainable_variables} ==
          {w.value.ref() for w in reloaded.trainable_weights})
  frozen = [w for i in (0, 2, 5) for w in reloaded.flow.flow_layers[i].weights]
  before = [w.numpy().copy() for w in frozen]
  reloaded.compile(keras.optimizers.Adam(1e-2))
  reloaded.fit(TARGET.sample(64, seed=(5, 6)), batch_size=32, verbose=0)
  for weight, old in zip(frozen, before):
    np.testing.assert_array_equal(weight.numpy(), old, err_msg=weight.path)
