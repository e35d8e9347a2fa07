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

SIGMOID_2 = 1.0 / (1.0 + math.exp(-2.0))

def _sharp_digits():
  (x_train, _), _ = tff.data.load_digits_images()
  return x_train * 15.0  # integers in [0, 240] of an 8-bit space


def _small_glow(**kwargs):
  return tff.models.Glow([8, 8, 1], num_scales=1, steps_per_scale=4, hidden_channels=32,
                         num_bits=8, **kwargs)


def _couplings(model):
  return [layer.flow_layers[2] for layer in model.flow_layers
          if isinstance(layer, tff.layers.GlowStep)]


@pytest.mark.parametrize("scale,max_expansion", [
    ("sigmoid", 1.0 / SIGMOID_2),  # sigma < 1/sigmoid(2) = 1.136
    ("exp", math.exp(2.0)),        # |log s| < clamp = 2
])
def test_couplings_asking_for_a_tiny_scale_keep_latents_bounded(scale, max_expansion):
  """Regression: the data -> base side divided by s = sigmoid(h + 2) / sigmoid(2).

  A trained coupling whose net asks for h = -8 on every transformed entry (s = 0.0028)
  sent the batch's latents to 5e10 and its loss to 3e20 bits/dim. Now "sigmoid"
  multiplies by sigma in (e^-2, 1.14) in training, so every coupling contracts, and
  "exp" expands by less than e^2 per coupling. The 1x1 convolutions start as rotations
  and the squeeze is a permutation, so the latent's norm is at most max_expansion^4
  times the preprocessed image's.
  """
  x = _sharp_digits()[:64]
  model = _small_glow(scale=scale)
  couplings = _couplings(model)
  assert len(couplings) == 4
  for coupling in couplings:
    bias = coupling.net._output.bias  # pylint: disable=protected-access
    bias.assign(np.tile([-8.0, 0.0], bias.shape[0] // 2).astype("float32"))
  u, _ = model.flow_layers[0](tf.constant(x), training=False)  # logit space
  z, _ = model.flow(tf.constant(x), training=False)
  assert np.all(np.isfinite(z.numpy()))
  norm = lambda v: np.linalg.norm(v.numpy().reshape(len(x), -1), axis=1)
  assert np.all(norm(z) <= max_expansion**4 * norm(u) * (1 + 1e-5))


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
