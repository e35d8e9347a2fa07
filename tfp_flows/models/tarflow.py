"""The TarFlow preset: Transformer autoregressive blocks over image patches, and its sampler."""

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_flows import flow
from tfp_flows import layers
from tfp_flows.bijectors import conditioning
from tfp_flows.layers import tarflow as tarflow_layers
from tfp_flows.models import _aliases
from tfp_flows.models import _dtype
from tfp_flows.numerics import probes

__all__ = ["TarFlow", "TarFlowModel", "tweedie_denoise"]


def tweedie_denoise(log_prob_fn, x, noise_std):
  """One-step score denoising `x + s^2 grad_x log p_s(x)` (Tweedie's formula).

  If `x = x0 + s eps` with `eps ~ N(0, I)` and `p_s` is the density of such noisy points,
  the result is `E[x0 | x]`, the posterior mean of the clean point (Efron 2011; TarFlow,
  https://arxiv.org/abs/2412.06329, eq. 9).

  Args:
    log_prob_fn: callable `x -> log p_s(x)`, one value per row.
    x: noisy points.
    noise_std: `s`, in the units of `x`.
  """
  x = tf.convert_to_tensor(x)
  with tf.GradientTape() as tape:
    tape.watch(x)
    log_prob = tf.reduce_sum(log_prob_fn(x))
  return x + tf.cast(noise_std, x.dtype) ** 2 * tape.gradient(log_prob, x)


@keras.saving.register_keras_serializable(package="tfp_flows")
class TarFlowModel(flow.FlowModel):
  """A `FlowModel` whose `sample` adds TarFlow's guidance, denoising and sampler choice.

  Everything else (log_prob, fit, bits/dim, `.bijector`, `.distribution`) is
  `FlowModel`'s. Guidance and the sampler apply to the `TarFlowBlock`s among
  `flow_layers`; denoising needs a `NoiseAugmentation` layer among them.
  """

  def sample(self, n, seed=None, context=None, temperature=1.0, guidance=0.0,
             denoise=False, sampling=None):
    """Draws samples (forward, base -> data).

    Args:
      n: number of samples (per context row).
      seed: int or stateless seed; same seed, same samples.
      context: for class-conditional models, int labels: one (gives
        `[n, *event_shape]`) or `[m]` (gives `[n, m, *event_shape]`).
      temperature: scales the standard-normal base.
      guidance: classifier-free guidance weight w: every block's parameters become
        `h(x, c) + w (h(x, c) - h(x, none))`; 0 samples the conditional model, -1 the
        unconditional one.
      denoise: apply TarFlow's one-step denoising in the space where training added
        noise (the input of `NoiseAugmentation`): `u + s^2 grad_u log p(u | c)` with the
        model's own (unguided) log-density gradient, then map to pixels.
      sampling: "kv_cache", "jacobi" or "naive" for every block; None keeps each
        block's own.

    Raises:
      ValueError: for a guidance that is not finite or without classes, or denoising
        in a model built without a `NoiseAugmentation` layer (the `TarFlow` preset
        always has one; with `noise_std=0` its denoising step changes nothing).
    """
    guidance = tarflow_layers.checked_guidance(guidance)
    if guidance == 0.0 and sampling is None and not denoise:
      return super().sample(n, seed=seed, context=context, temperature=temperature)
    if guidance != 0.0 and self.context_shape is None:
      raise ValueError(f"guidance={guidance} needs a class-conditional model "
                       "(num_classes set) and labels as context.")
    split = self._noise_layer_index() if denoise else 0
    context, rows, total = self._sample_context(n, context, temperature)
    if not tf.is_tensor(total) and total == 0:
      return tf.zeros([n, *rows, *self.event_shape], self.base_distribution.dtype)
    z = self.base_distribution.sample(
        total, seed=probes.stateless_seed(seed)) * temperature
    tail = self.sampling_bijector(guidance, sampling, start=split)
    x = tail.forward(z, **conditioning.conditional_kwargs(tail, context))
    if denoise:
      noise_layer = self.flow_layers[split]
      x = tweedie_denoise(lambda u: self._tail_log_prob(u, context, split), x,
                          noise_layer.input_noise_std)
      head = tfp.bijectors.Chain([layer.bijector for layer in self.flow_layers[:split]],
                                 name=conditioning.stable_name("head"))
      x = head.forward(x, **conditioning.conditional_kwargs(head, context))
    x = self.flow.postprocess_sample(x)
    return tf.reshape(x, [n, *rows, *self.event_shape])

  def _noise_layer_index(self):
    for i, layer in enumerate(self.flow_layers):
      if isinstance(layer, layers.NoiseAugmentation):
        return i
    raise ValueError("denoise=True needs a NoiseAugmentation layer (noise_std > 0 in "
                     "training); this model has none.")

  def sampling_bijector(self, guidance=0.0, sampling=None, start=0):
    """`tfb.Chain` of the bijectors of `flow_layers[start:]` as `sample` uses them.

    With the defaults it computes what `model.bijector` does; `guidance` and `sampling`
    go to every `TarFlowBlock` (see `sample`). A guided chain is a bijector of the
    guided density. Export's `sample` signature can serve it (KV-cache loop included).
    """
    bijectors = [
        layer.make_bijector(guidance=guidance, sampling=sampling)
        if isinstance(layer, layers.TarFlowBlock) else layer.bijector
        for layer in self.flow_layers[start:]]
    return tfp.bijectors.Chain(bijectors, name=conditioning.stable_name("flow"))

  def _tail_log_prob(self, u, context, start):
    """Log-density of `u` at the data side of `flow_layers[start]` (evaluation mode)."""
    total = tf.zeros(tf.shape(u)[:1], u.dtype)
    for layer in self.flow_layers[start:]:
      u, ildj = layer(u, context=context, training=False)
      total += ildj
    return self.base_distribution.log_prob(u) + total


def TarFlow(event_shape=None, patch_size=2, channels=128, num_blocks=4, layers_per_block=2,  # pylint: disable=invalid-name
            heads=4, noise_std=0.05, num_bits=8, num_classes=None, expansion=4,
            label_dropout=0.1, logit_alpha=None, clamp=4.0, sampling="kv_cache",
            name="tarflow", *, image_shape=None, dtype=None):
  """TarFlow over integer images in [0, 2**num_bits), as a `TarFlowModel`.

  Data side first: `Dequantize(num_bits, alpha=logit_alpha)` (uniform noise in training;
  by default the linear map to [-1/2, 1/2)), `NoiseAugmentation(noise_std)` (x2 to
  TarFlow's [-1, 1), Gaussian noise in training), then `num_blocks` `TarFlowBlock`s of
  `layers_per_block` Transformer layers over `patch_size` patches, alternating the token
  order, onto a standard normal. `bits_per_dim` is in the discrete pixel space, as for
  `Glow`. Class-conditional with `num_classes` (`log_prob(x, context=labels)`,
  `sample(n, context=labels, guidance=w)`); `sample` also takes `temperature`,
  `denoise=True` and `sampling=` ("kv_cache", "jacobi", "naive").

  Classifier-free guidance follows apple/ml-tarflow (the `guidance` of its `reverse`,
  guiding both parameters): `sample(n, context=labels, guidance=w)` samples every block
  with the log-scale and shift

  ```none
  h_w(x_<i, c) = h(x_<i, c) + w (h(x_<i, c) - h(x_<i, none))
  ```

  where `h(., none)` is the net given the null label (label -1, a learned class row that
  `label_dropout` trains). So `w = 0` is the conditional model without guidance, bit for
  bit; `w = -1` is the unconditional model, the same as `context=-1` up to float32
  round-off; `w > 0` guides past the conditional model (the paper's w; Ho and Salimans'
  classifier-free guidance weight). The "guidance scale" `s` of some diffusion
  libraries, `h(none) + s (h(c) - h(none))`, where `s = 0` is unconditional, is
  `s = 1 + w`. Unlike apple/ml-tarflow, which guides only for w > 0 and takes the mean
  class embedding as its null label, any w is applied.

  Reference: Zhai et al., Normalizing Flows are Capable Generative Models,
  https://arxiv.org/abs/2412.06329.

  `event_shape` is the library's spelling (that of `FlowModel` and the other presets);
  `image_shape` is the older alias. Pass one of the two.

  Args:
    event_shape: `[H, W, C]`, the shape of one image, H and W divisible by
      `patch_size`. Required, in this spelling or as `image_shape`.
    patch_size: side of the square patches that become tokens.
    channels: Transformer width.
    num_blocks: autoregressive blocks.
    layers_per_block: attention + MLP layers per block.
    heads: attention heads.
    noise_std: training noise on the [-1, 1) pixels (0 for none).
    num_bits: bits per pixel of the data.
    num_classes: number of labels for a class-conditional model, or None.
    expansion: MLP width factor.
    label_dropout: training probability of dropping a label (for guidance).
    logit_alpha: None for the linear pixel map, or a logit margin.
    clamp: bound on each affine log-scale.
    sampling: the blocks' default sampler.
    name: model name.
    image_shape: older alias of `event_shape`.
    dtype: the dtype policy of every layer and of the model: None for Keras' global one
      (`keras.config.set_floatx`), "float32" or "float64". Under a global mixed precision
      policy pass "float32": flows compute in one float type.

  Raises:
    ValueError: for a bad shape or count, or the shape passed in both spellings (or in
      neither).
  """
  if int(num_blocks) < 1:
    raise ValueError(f"num_blocks must be at least 1; got {num_blocks!r}.")
  height, width, channels_in = _aliases.image_event_shape("TarFlow", event_shape,
                                                          image_shape)
  dtype = _dtype.layer_arguments("TarFlow", dtype)
  flow_layers = [layers.Dequantize(num_bits=num_bits, alpha=logit_alpha, **dtype),
                 layers.NoiseAugmentation(noise_std=noise_std, **dtype)]
  flow_layers += [
      layers.TarFlowBlock(patch_size=patch_size, channels=channels,
                          num_layers=layers_per_block, heads=heads, expansion=expansion,
                          reverse=block % 2 == 1, num_classes=num_classes,
                          label_dropout=label_dropout, clamp=clamp, sampling=sampling,
                          **dtype)
      for block in range(int(num_blocks))]
  return TarFlowModel(
      flow_layers, event_shape=[height, width, channels_in],
      context_shape=None if num_classes is None else [], context_dtype="int32", name=name,
      **dtype)
