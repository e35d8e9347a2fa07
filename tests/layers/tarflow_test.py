"""tfp_flows.layers.TarFlowBlock and NoiseAugmentation: bijector, guidance, label dropout, saving."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfp_flows as tff
from tfp_flows.bijectors import conditioning

IMAGE = [4, 4, 2]
SMALL = {"patch_size": 2, "channels": 8, "num_layers": 1, "heads": 2}


def _perturb(weights, seed=0, scale=0.3):
  rng = np.random.default_rng(seed)
  for weight in weights:
    value = keras.ops.convert_to_numpy(weight)
    weight.assign(value + scale * rng.normal(size=value.shape).astype(value.dtype))


def _block(num_classes=None, **kwargs):
  keras.utils.set_random_seed(0)
  layer = tff.layers.TarFlowBlock(**SMALL, num_classes=num_classes, **kwargs)
  layer.build((None, *IMAGE))
  _perturb(layer.trainable_weights)
  return layer


def _images(n=4, seed=1):
  return tf.constant(np.random.default_rng(seed).normal(size=[n, *IMAGE]).astype("float32"))


def test_call_is_the_bijectors_inverse_and_log_det():
  layer = _block(num_classes=3)
  x, labels = _images(), tf.constant([0, 1, 2, -1])
  z, ildj = layer(x, context=labels, training=False)
  bijector = layer.bijector
  np.testing.assert_allclose(z.numpy(), bijector.inverse(x, conditional_input=labels).numpy(),
                             rtol=1e-6)
  np.testing.assert_allclose(
      ildj.numpy(), bijector.inverse_log_det_jacobian(x, 3, conditional_input=labels).numpy(),
      rtol=1e-6)
  assert np.all(np.abs(ildj.numpy()) > 0.1)
  # 2 embeddings + class table + proj_in 2 + layer 12 + out norm 2 + proj_out 2.
  assert len(layer.trainable_weights) == 3 + 2 + 12 + 2 + 2


def test_label_dropout_replaces_labels_by_no_label_in_training_only():
  layer = _block(num_classes=3, label_dropout=0.5, seed=3)
  x = _images(n=32)
  labels = tf.constant(np.arange(32) % 3, tf.int32)
  z_train, _ = layer(x, context=labels, training=True)
  z_label, _ = layer(x, context=labels, training=False)
  z_none, _ = layer(x, context=-tf.ones_like(labels), training=False)
  as_label = np.all(np.isclose(z_train, z_label, atol=1e-6), axis=(1, 2, 3))
  as_none = np.all(np.isclose(z_train, z_none, atol=1e-6), axis=(1, 2, 3))
  assert np.all(as_label ^ as_none)  # every row is exactly one of the two
  assert 6 <= as_none.sum() <= 26  # about half dropped (binomial 32, 1/2: +-3.5 sd)


def test_guidance_combines_conditional_and_unconditional_parameters():
  layer = _block(num_classes=3)
  x, labels = _images(), tf.constant([0, 1, 2, 1])
  none = -tf.ones_like(labels)
  plain = layer.make_bijector()
  # w = 0 is the conditional model, w = -1 the unconditional one.
  np.testing.assert_array_equal(
      layer.make_bijector(guidance=0.0).inverse(x, conditional_input=labels).numpy(),
      plain.inverse(x, conditional_input=labels).numpy())
  np.testing.assert_allclose(
      layer.make_bijector(guidance=-1.0).inverse(x, conditional_input=labels).numpy(),
      plain.inverse(x, conditional_input=none).numpy(), rtol=1e-5, atol=1e-5)
  # Any w: parameters (1 + w) h(x, c) - w h(x, none), by hand through the net.
  w = 1.5
  tokens, _ = plain._to_tokens(x)  # pylint: disable=protected-access
  params = (1 + w) * layer.net(tokens, labels) - w * layer.net(tokens, None)
  log_scale = 4.0 * tf.tanh(params[..., 0] / 4.0)
  expected = (tokens - params[..., 1]) * tf.exp(-log_scale)
  guided = layer.make_bijector(guidance=w)
  z_tokens, _ = plain._to_tokens(guided.inverse(x, conditional_input=labels))  # pylint: disable=protected-access
  np.testing.assert_allclose(z_tokens.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
  # The guided KV-cache sampler inverts the guided density pass.
  z = _images(seed=5)
  sample = guided.forward(z, conditional_input=labels)
  np.testing.assert_allclose(
      guided.inverse(tf.identity(sample), conditional_input=labels).numpy(), z.numpy(),
      atol=1e-4)


def test_noise_augmentation():
  layer = tff.layers.NoiseAugmentation(noise_std=0.1, seed=2)
  x = tf.constant(np.random.default_rng(0).uniform(-0.5, 0.5, [64, 8, 8, 1]), tf.float32)
  layer.build(x.shape)
  z, ildj = layer(x, training=False)
  np.testing.assert_allclose(z.numpy(), 2 * x.numpy(), rtol=1e-6)
  np.testing.assert_allclose(ildj.numpy(), 64 * math.log(2.0), rtol=1e-6)
  z_train, ildj_train = layer(x, training=True)
  noise = z_train.numpy() - 2 * x.numpy()
  assert abs(noise.std() - 0.1) < 0.005 and abs(noise.mean()) < 0.005
  np.testing.assert_allclose(ildj_train.numpy(), ildj.numpy())
  assert layer.input_noise_std == pytest.approx(0.05)


def test_keras_round_trip_in_a_flow_model(tmp_path):
  keras.utils.set_random_seed(0)
  model = tff.FlowModel(
      [tff.layers.NoiseAugmentation(0.05),
       tff.layers.TarFlowBlock(**SMALL, num_classes=3),
       tff.layers.TarFlowBlock(**SMALL, num_classes=3, reverse=True, sampling="jacobi")],
      event_shape=IMAGE, context_shape=[], context_dtype="int32")
  _perturb(model.trainable_weights)
  x, labels = _images(), tf.constant([0, 1, 2, -1])
  path = str(tmp_path / "model.keras")
  model.save(path)
  loaded = keras.models.load_model(path)
  np.testing.assert_array_equal(loaded.log_prob(x, context=labels).numpy(),
                                model.log_prob(x, context=labels).numpy())
  np.testing.assert_array_equal(loaded.sample(2, seed=3, context=1).numpy(),
                                model.sample(2, seed=3, context=1).numpy())
  assert loaded.flow_layers[2].sampling == "jacobi" and loaded.flow_layers[2].reverse


def test_functional_model_on_keras_inputs():
  layer = tff.layers.TarFlowBlock(**SMALL)
  x_in = keras.Input(IMAGE)
  z, ildj = layer(x_in)
  model = keras.Model(x_in, [z, ildj])
  _perturb(model.trainable_weights)
  x = _images()
  z, ildj = model(x)
  eager_z, eager_ildj = layer(x, training=False)
  np.testing.assert_allclose(z.numpy(), eager_z.numpy(), rtol=1e-6)
  np.testing.assert_allclose(ildj.numpy(), eager_ildj.numpy(), rtol=1e-6)


def test_fit_under_xla_and_conditional_routing():
  keras.utils.set_random_seed(0)
  model = tff.FlowModel([tff.layers.TarFlowBlock(**SMALL, num_classes=3)],
                        event_shape=IMAGE, context_shape=[], context_dtype="int32")
  model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True)
  x = np.random.default_rng(0).normal(size=[32, *IMAGE]).astype("float32") * 0.5 + 1.0
  labels = np.arange(32) % 3
  history = model.fit(x, labels, batch_size=16, epochs=3, verbose=0)
  losses = history.history["loss"]
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
  kwargs = conditioning.conditional_kwargs(model.bijector, tf.constant(labels[:4]))
  np.testing.assert_allclose(
      model.distribution.log_prob(tf.constant(x[:4]), bijector_kwargs=kwargs).numpy(),
      model.log_prob(x[:4], context=labels[:4]).numpy(), rtol=1e-5)


def test_errors():
  with pytest.raises(ValueError, match="heads=3 must divide channels=8"):
    tff.layers.TarFlowBlock(channels=8, heads=3)
  with pytest.raises(ValueError, match="label_dropout must be in"):
    tff.layers.TarFlowBlock(label_dropout=1.0)
  with pytest.raises(ValueError, match="must divide the image height"):
    tff.layers.TarFlowBlock(patch_size=3).build((None, *IMAGE))
  with pytest.raises(ValueError, match="TarFlowBlock takes images"):
    tff.layers.TarFlowBlock().build((None, 8))
  with pytest.raises(ValueError, match="needs a class-conditional block"):
    _block().make_bijector(guidance=1.0)
  with pytest.raises(ValueError, match="noise_std must be >= 0"):
    tff.layers.NoiseAugmentation(noise_std=-0.1)
