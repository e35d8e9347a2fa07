"""Keras layers of TarFlow: a Transformer autoregressive block, and training-noise augmentation."""

import math

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_flows.bijectors import transformer_autoregressive
from tfp_flows.bijectors import transformers
from tfp_flows.layers import _replica_seed
from tfp_flows.layers import flow_layer
from tfp_flows.nets import causal_transformer
from tfp_flows.numerics import checks
from tfp_flows.numerics import probes

__all__ = ["TarFlowBlock", "NoiseAugmentation", "checked_guidance"]


def checked_guidance(guidance):
  """`guidance` as a float, which must be finite (NaN or inf would make every sample NaN)."""
  value = float(guidance)
  if not math.isfinite(value):
    raise ValueError(f"guidance must be a finite number; got {guidance!r}.")
  return value


@keras.saving.register_keras_serializable(package="tfp_flows")
class TarFlowBlock(flow_layer.FlowLayer):
  """One TarFlow block: a `CausalTransformer` conditioning an affine flow over image patches.

  Its bijector is `tfp_flows.bijectors.TransformerAutoregressive` over `[H, W, C]` images
  cut into `patch_size` patches: density evaluation (`log_prob`, `fit`) is one parallel
  Transformer pass, sampling is sequential over tokens ("kv_cache", default; "jacobi"
  for parallel fixed-point sweeps; "naive"). Stack blocks with alternating `reverse`.
  The Transformer's output projection starts at zero, so the block starts as the
  identity.

  Class-conditional blocks (`num_classes` set) read int labels from the flow's context;
  a label of -1 means "no label", and any other outside `[0, num_classes)` is an error.
  In training each valid label is dropped (set to -1) with probability `label_dropout`,
  so the same net also learns the unconditional model that classifier-free guidance
  needs: `make_bijector(guidance=w)` uses the parameters
  `h_w = h(x, c) + w (h(x, c) - h(x, none))` (TarFlow's guidance; w = 0 is the
  conditional model, w = -1 the unconditional one). A guided bijector is a bijector of
  its own (forward and inverse agree), of the guided density.

  Args:
    patch_size: side P of the square patches; divides H and W.
    channels: Transformer width.
    num_layers: attention + MLP layers of the Transformer.
    heads: attention heads (divide `channels`).
    expansion: MLP width factor.
    reverse: read the patches in reverse raster order.
    num_classes: number of labels, or None for an unconditional block.
    label_dropout: training probability of replacing a label by "no label".
    clamp: bound on |log-scale| of the affine map (soft, `AffineTransformer("exp")`).
    sampling: "kv_cache", "jacobi" or "naive" (see `TransformerAutoregressive`).
    block_size: Gauss-Seidel block of "jacobi" sampling (None: all tokens).
    tolerance: Jacobi stopping rule.
    max_iterations: Jacobi sweeps per block (None: the block size, always exact).
    seed: seed of the label dropout.
  """

  takes_no_label = True  # the label -1, read by tfp_flows.export_checks too

  def __init__(self, patch_size=2, channels=128, num_layers=2, heads=4, expansion=4,
               reverse=False, num_classes=None, label_dropout=0.1, clamp=4.0,
               sampling="kv_cache", block_size=None, tolerance=1e-5, max_iterations=None,
               seed=None, **kwargs):
    kwargs.setdefault("conditional", num_classes is not None)
    super().__init__(**kwargs)
    self.patch_size = checks.int_at_least("patch_size", patch_size)
    (self.channels, self.num_layers, self.heads, self.expansion,
     self.num_classes) = causal_transformer.checked_architecture(
         channels, num_layers, heads, expansion, num_classes)
    self.reverse = bool(reverse)
    if not 0.0 <= float(label_dropout) < 1.0:
      raise ValueError(f"label_dropout must be in [0, 1); got {label_dropout!r}.")
    self.label_dropout = float(label_dropout)
    self.clamp = checks.positive_float("clamp", clamp)
    self.sampling = checks.one_of("sampling", sampling,
                                  transformer_autoregressive.SAMPLING_METHODS)
    self.block_size = None if block_size is None else checks.int_at_least(
        "block_size", block_size)
    self.tolerance = checks.positive_float("tolerance", tolerance)
    self.max_iterations = None if max_iterations is None else checks.int_at_least(
        "max_iterations", max_iterations)
    self.seed = seed
    self.seed_generator = (None if self.num_classes is None else
                           keras.random.SeedGenerator(seed, name="label_dropout_seed"))

  def build(self, inputs_shape, context_shape=None):
    """Creates the Transformer's weights for images `[N, H, W, C]`.

    Raises:
      ValueError: for inputs that are not images, or a patch size not dividing H and W.
    """
    event_shape = [None if d is None else int(d) for d in inputs_shape[1:]]
    if len(event_shape) != 3 or None in event_shape:
      raise ValueError("TarFlowBlock takes images [N, H, W, C] of known size; got input "
                       f"shape {inputs_shape}.")
    height, width, channels = event_shape
    if height % self.patch_size or width % self.patch_size:
      raise ValueError(f"patch_size={self.patch_size} must divide the image height and "
                       f"width; got images of shape {event_shape}.")
    self.image_shape = event_shape
    num_tokens = (height // self.patch_size) * (width // self.patch_size)
    token_size = self.patch_size ** 2 * channels
    self.net = causal_transformer.CausalTransformer(
        num_tokens, token_size, params_per_dim=2, channels=self.channels,
        num_layers=self.num_layers, heads=self.heads, expansion=self.expansion,
        num_classes=self.num_classes, dtype=self.dtype_policy, name="transformer")
    self.net.build((None, num_tokens, token_size))
    super().build(inputs_shape)

  def make_bijector(self, guidance=0.0, sampling=None):
    """The block's bijector from the current weights.

    Args:
      guidance: classifier-free guidance weight w (class-conditional blocks only).
      sampling: overrides the layer's sampling method for this bijector.
    """
    guidance = checked_guidance(guidance)
    if guidance != 0.0 and self.num_classes is None:
      raise ValueError(f"guidance={guidance} needs a class-conditional block "
                       "(num_classes set); this one is unconditional.")
    conditioner = self.net if guidance == 0.0 else _Guided(self.net, guidance)
    return transformer_autoregressive.TransformerAutoregressive(
        conditioner, self.image_shape, self.patch_size,
        transformer=transformers.AffineTransformer("exp", clamp=self.clamp),
        decoder=conditioner, reverse=self.reverse, conditional=self.conditional,
        sampling=sampling or self.sampling, block_size=self.block_size,
        tolerance=self.tolerance, max_iterations=self.max_iterations,
        dtype=self.compute_dtype, name=self.bijector_name())

  def call(self, inputs, context=None, training=None):
    if training and self.conditional and self.label_dropout > 0.0 and context is not None:
      labels = tf.convert_to_tensor(context)
      draw = tf.random.stateless_uniform(
          tf.shape(labels), _replica_seed.draw_replica_seed(self.seed_generator),
          alg=probes.RNG_ALGORITHM)
      # Only valid labels are dropped, so that a bad one still reaches the net's check.
      drop = (draw < self.label_dropout) & (labels >= 0) & (labels < self.num_classes)
      context = tf.where(drop, -tf.ones_like(labels), labels)
    return super().call(inputs, context=context, training=training)

  def get_config(self):
    return {**super().get_config(), "patch_size": self.patch_size, "channels": self.channels,
            "num_layers": self.num_layers, "heads": self.heads,
            "expansion": self.expansion, "reverse": self.reverse,
            "num_classes": self.num_classes, "label_dropout": self.label_dropout,
            "clamp": self.clamp, "sampling": self.sampling, "block_size": self.block_size,
            "tolerance": self.tolerance, "max_iterations": self.max_iterations,
            "seed": self.seed}


class _Guided:
  """Classifier-free guidance of a class-conditional `CausalTransformer`, as a conditioner.

  `h_w(x, c) = h(x, c) + w (h(x, c) - h(x, none))` in parallel and in incremental
  decoding, where the decoder keeps the caches of both passes.
  """

  def __init__(self, net, guidance):
    self.net = net
    self.guidance = guidance

  def _combine(self, conditional, unconditional):
    return conditional + self.guidance * (conditional - unconditional)

  def __call__(self, tokens, labels):
    return self._combine(self.net(tokens, labels), self.net(tokens, None))

  def initial_cache(self, batch_size, labels):
    return (self.net.initial_cache(batch_size, labels),
            self.net.initial_cache(batch_size, None))

  def step(self, cache, index, previous_token, labels):
    conditional, cache_c = self.net.step(cache[0], index, previous_token, labels)
    unconditional, cache_u = self.net.step(cache[1], index, previous_token, None)
    return self._combine(conditional, unconditional), (cache_c, cache_u)


@keras.saving.register_keras_serializable(package="tfp_flows")
class NoiseAugmentation(flow_layer.FlowLayer):
  """Scales the data by `scale` and, in training only, adds Gaussian noise (TarFlow's trick).

  Data -> base: `y = scale * x`, plus `noise_std * eps`, `eps ~ N(0, I)` from the layer's
  `keras.random.SeedGenerator` when training. The bijector is `tfb.Scale(1 / scale)`
  (forward base -> data), log-det `-D log(scale)` in the data -> base direction. After
  `Dequantize(alpha=None)` (pixels in [-1/2, 1/2)) the default `scale=2` gives TarFlow's
  pixel range [-1, 1), where `noise_std` is measured as in the paper. Training on the
  noisy data models the density `p_sigma` of `x + (noise_std / scale) eps`; TarFlow's
  one-step denoising `x + s^2 grad log p_sigma(x)` (Tweedie's formula, `s = input_noise_std`)
  undoes the noise on samples (`TarFlowModel.sample(denoise=True)`). Evaluation
  (`log_prob`) adds no noise.

  Reference: Zhai et al., TarFlow, https://arxiv.org/abs/2412.06329, Sec. 2.3-2.4.

  Args:
    noise_std: standard deviation of the noise on the scaled data (>= 0).
    scale: positive factor applied to the data.
    seed: seed of the noise.
  """

  def __init__(self, noise_std=0.05, scale=2.0, seed=None, **kwargs):
    super().__init__(**kwargs)
    if not float(noise_std) >= 0.0:
      raise ValueError(f"noise_std must be >= 0; got {noise_std!r}.")
    self.noise_std = float(noise_std)
    self.scale = checks.positive_float("scale", scale)
    self.seed = seed
    self.seed_generator = keras.random.SeedGenerator(seed, name="noise_seed")

  @property
  def input_noise_std(self):
    """The noise's standard deviation in this layer's input (data-side) space."""
    return self.noise_std / self.scale

  def make_bijector(self):
    return tfp.bijectors.Scale(tf.constant(1.0 / self.scale, self.compute_dtype),
                               name=self.bijector_name())

  def call(self, inputs, context=None, training=None):
    if training and self.noise_std > 0.0:
      inputs = inputs + self.input_noise_std * tf.random.stateless_normal(
          tf.shape(inputs), _replica_seed.draw_replica_seed(self.seed_generator),
          dtype=inputs.dtype, alg=probes.RNG_ALGORITHM)
    return super().call(inputs, context=context, training=training)

  def get_config(self):
    return {**super().get_config(), "noise_std": self.noise_std, "scale": self.scale,
            "seed": self.seed}
