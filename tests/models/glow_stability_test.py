"""Glow trains stably on sharp real images (issue 12): bounded scales, no loss spikes.

The digits are 8x8 images with 17 grey levels; held in an 8-bit space (x 15) they occupy
17 of 256 levels, a deliberately sharp density like Fashion-MNIST's empty background.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfp_flows as tff

def _sharp_digits():
  (x_train, _), _ = tff.data.load_digits_images()
  return x_train * 15.0  # integers in [0, 240] of an 8-bit space


def _small_glow(**kwargs):
  return tff.models.Glow([8, 8, 1], num_scales=1, steps_per_scale=4, hidden_channels=32,
                         num_bits=8, **kwargs)


def _couplings(model):
  return [layer.flow_layers[2] for layer in model.flow_layers
          if isinstance(layer, tff.layers.GlowStep)]


def test_couplings_asking_for_a_tiny_scale_shrink_latents_in_training():
  """Regression: the data -> base side divided by s = sigmoid(h + 2) / sigmoid(2).

  A trained coupling whose net asks for h = -8 on every transformed entry (s = 0.0028)
  sent the batch's latents to 1e5 and its loss to hundreds of bits/dim; the training
  direction now multiplies by sigma in (e^-clamp, 1.14), so every coupling contracts.
  """
  x = _sharp_digits()[:64]
  model = _small_glow()
  couplings = _couplings(model)
  assert len(couplings) == 4
  for coupling in couplings:
    bias = coupling.net._output.bias  # pylint: disable=protected-access
    bias.assign(np.tile([-8.0, 0.0], bias.shape[0] // 2).astype("float32"))
  z, _ = model.flow(tf.constant(x), training=False)
  assert np.all(np.isfinite(z.numpy())) and np.max(np.abs(z.numpy())) < 10.0
  bits = -model.log_prob(x).numpy() / (64 * math.log(2.0))
  assert np.all(np.isfinite(bits)) and np.all(bits < 20.0)


@pytest.mark.parametrize("logit_alpha", [0.05, None], ids=["logit", "linear"])
def test_training_on_sharp_images_has_no_spikes_and_finite_samples(logit_alpha):
  keras.utils.set_random_seed(0)
  x = _sharp_digits()
  model = _small_glow(logit_alpha=logit_alpha)
  model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
  data = (tf.data.Dataset.from_tensor_slices(x).shuffle(len(x), seed=0).repeat()
          .batch(64, drop_remainder=True))
  history = model.fit(data, epochs=12, steps_per_epoch=25, verbose=0)
  means = np.array(history.history["bits_per_dim"])
  maxima = np.array(history.history["loss_max"]) / (64 * math.log(2.0))
  assert np.all(np.isfinite(means)) and np.all(np.isfinite(maxima))
  assert means[-1] < means[0] - 1.0  # it learns
  # After the first 100 steps no step's loss exceeds 3x its epoch's mean.
  assert np.all(maxima[4:] < 3.0 * means[4:]), (maxima, means)
  samples = model.sample(64, seed=1).numpy()
  assert np.all(np.isfinite(samples))
  assert samples.min() >= 0 and samples.max() <= 255
