"""Fit FFJORD to three 2-D densities by maximum likelihood and by flow matching.

Trains `tff.models.FFJORDFlow([2])` (one continuous normalizing flow whose vector
field is a concat-squash MLP 64x3; `--actnorm` adds an ActNorm before it) on two
moons, a ring of 8 Gaussians and a checkerboard, all generated in code (and already
of about unit scale), in up to three ways:

* `ml`: maximum likelihood, `fit` solves the ODE data -> base with dopri5 and the
  Hutchinson trace and differentiates by the adjoint method;
* `fm`: flow matching (Lipman et al. 2022), a regression of the same vector field on
  straight paths between base and data points, no ODE solve in training;
* `fm_ot`: flow matching with minibatch optimal-transport pairing (Tong et al. 2023),
  whose straighter paths need fewer solver steps at evaluation.

For each fit it prints the held-out NLL in nats (`log_prob` uses the exact trace in
2-D, so it is the exact likelihood of the learned flow up to the solver tolerance),
next to a full-covariance Gaussian and to the neural spline flow of
`examples/spline_flow_2d.py` (4 coupling layers, same data sizes), with the wall time
of the first step (tracing and the XLA compile) and of the rest of training, and the
vector-field evaluations of an evaluation solve (exact trace, batches of 1024). It
writes one PNG row per density: the data, then the learned density of each method,
then sample trajectories (base points carried to the data by the method's own dopri5
solver, drawn at several times; the last points are samples).

Run: python examples/ffjord_2d.py [--output ffjord_2d.png] [--methods ml,fm,fm_ot]
"""

import argparse
import math
import time

import keras
import matplotlib
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_flows as tff
from tfp_flows import data
from tfp_flows.numerics import ode

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

LIMIT = 3.0
METHODS = {"ml": ("maximum_likelihood", False), "fm": ("flow_matching", False),
           "fm_ot": ("flow_matching", True)}
# Test NLL (nats) of examples/spline_flow_2d.py with its defaults, as recorded.
NSF_NLL = {"two_moons": 1.160, "ring": 1.175, "checkerboard": 2.212}


def gaussian_nll(x_train, x_test):
  """Held-out NLL (nats) of a full-covariance Gaussian fitted to `x_train`."""
  mean = x_train.mean(0)
  cov = np.cov(x_train, rowvar=False)
  diff = x_test - mean
  _, log_det = np.linalg.slogdet(cov)
  maha = np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov), diff)
  return float(np.mean(0.5 * (maha + log_det + x_train.shape[1] * math.log(2 * math.pi))))


class StepTimer(keras.callbacks.Callback):
  """Wall time of the first step (tracing + XLA compile) and of all later steps."""

  def on_train_begin(self, logs=None):
    self.stamps = [time.perf_counter()]

  def on_train_batch_end(self, batch, logs=None):
    self.stamps.append(time.perf_counter())

  @property
  def first_step(self):
    return self.stamps[1] - self.stamps[0]

  @property
  def rest(self):
    return self.stamps[-1] - self.stamps[1]


def fit(x_train, method, args):
  training, optimal_transport = METHODS[method]
  epochs = {"ml": args.ml_epochs, "fm": args.fm_epochs, "fm_ot": args.fm_ot_epochs}[method]
  model = tff.models.FFJORDFlow([2], hidden_units=(64, 64, 64), rtol=args.rtol,
                                atol=args.atol, actnorm=args.actnorm, training=training,
                                optimal_transport=optimal_transport)
  steps = epochs * math.ceil(len(x_train) / args.batch_size)
  learning_rate = args.ml_learning_rate if training == "maximum_likelihood" else (
      args.fm_learning_rate)
  schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps,
                                                    alpha=0.05)
  model.compile(optimizer=keras.optimizers.Adam(schedule), jit_compile=not args.no_xla)
  timer = StepTimer()
  model.fit(x_train, epochs=epochs, batch_size=args.batch_size, verbose=0,
            callbacks=[timer])
  return model, timer, steps


def evaluate(model, x, size=1024):
  """Log-densities of the rows of `x` and the mean evaluation-mode NFE per batch.

  Batches are padded to `size` so that one XLA compilation serves every call.
  """
  block = model.flow_layers[-1]

  @tf.function(jit_compile=True)
  def log_prob(batch):
    values = model.log_prob(batch)
    return values, block.last_statistics["nfe"]

  values, nfes = [], []
  for i in range(0, len(x), size):
    batch = x[i:i + size]
    padded = np.concatenate([batch, np.zeros([size - len(batch), 2], batch.dtype)])
    out, nfe = log_prob(tf.constant(padded))
    values.append(out.numpy()[:len(batch)])
    nfes.append(float(nfe))
  return np.concatenate(values), float(np.mean(nfes))


def trajectories(model, z, num_times):
  """Points `[num_times + 1, N, 2]` of the flow from base points `z` at t = k T / num_times.

  Each segment [t_k, t_k+1] is one solve of `dz/dt = f(t, z)` by the block's own
  solver and tolerances (mapped onto s in [0, 1]); data-side layers (an ActNorm) then
  carry the points to data space. The last points are samples of the model.
  """
  block = model.flow_layers[-1]
  data_side = tfp.bijectors.Chain([layer.bijector for layer in model.flow_layers[:-1]])
  end_time = float(block.integration_time)

  @tf.function(jit_compile=True)
  def segment(z, t0, dt):
    def field(s, state):
      return [dt * block.vector_field(t0 + s * dt, state[0])]
    result = ode.integrate(field, [z], solver=block.solver, rtol=block.rtol,
                           atol=block.atol, max_num_steps=block.max_num_steps,
                           num_steps=block.num_steps)
    return result.state[0]

  points = [z]
  dt = tf.constant(end_time / num_times, tf.float32)
  for k in range(num_times):
    points.append(segment(points[-1], tf.constant(k * end_time / num_times, tf.float32),
                          dt))
  return np.stack([data_side.forward(p).numpy() for p in points])


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--output", default="ffjord_2d.png")
  parser.add_argument("--methods", default="ml,fm,fm_ot",
                      help="comma-separated among " + ", ".join(METHODS))
  parser.add_argument("--densities", default=",".join(data.TOY_2D))
  parser.add_argument("--ml_epochs", type=int, default=16)
  parser.add_argument("--fm_epochs", type=int, default=300)
  parser.add_argument("--fm_ot_epochs", type=int, default=60,
                      help="fewer than --fm_epochs: the OT pairing (Sinkhorn on each "
                      "batch) makes a step several times dearer")
  parser.add_argument("--ml_learning_rate", type=float, default=1e-2)
  parser.add_argument("--fm_learning_rate", type=float, default=3e-3)
  parser.add_argument("--rtol", type=float, default=1e-5)
  parser.add_argument("--atol", type=float, default=1e-5)
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--num_train", type=int, default=16384)
  parser.add_argument("--grid", type=int, default=100, help="density grid points per axis")
  parser.add_argument("--no_xla", action="store_true", help="train without jit_compile")
  parser.add_argument(
      "--actnorm", action="store_true",
      help="a data-initialised ActNorm before the block (flow matching does not train "
      "it: its output is a constant of the regression)")
  args = parser.parse_args()
  methods = args.methods.split(",")
  densities = args.densities.split(",")
  for method in methods:
    if method not in METHODS:
      raise ValueError(f"--methods takes {', '.join(METHODS)}; got {method!r}.")

  keras.utils.set_random_seed(0)
  axis_points = np.linspace(-LIMIT, LIMIT, args.grid, dtype="float32")
  grid = np.stack(np.meshgrid(axis_points, axis_points), -1).reshape(-1, 2)
  num_columns = 1 + 2 * len(methods)
  fig, axes = plt.subplots(len(densities), num_columns,
                           figsize=(3 * num_columns, 3.2 * len(densities)), squeeze=False)
  rows = []
  for row, name in enumerate(densities):
    x_train = data.make_toy_2d(name, args.num_train, seed=0)
    x_test = data.make_toy_2d(name, 4096, seed=1)
    gaussian = gaussian_nll(x_train, x_test)
    axes[row, 0].scatter(x_train[:3000, 0], x_train[:3000, 1], s=1)
    axes[row, 0].set_title(f"{name}: data")
    for column, method in enumerate(methods):
      model, timer, steps = fit(x_train, method, args)
      start = time.perf_counter()
      log_probs, nfe = evaluate(model, x_test)
      nll = -float(np.mean(log_probs))
      eval_seconds = time.perf_counter() - start
      rows.append((name, method, nll, gaussian, NSF_NLL.get(name), timer.first_step,
                   timer.rest, steps, nfe, eval_seconds))
      print(f"{name:13s} {method:6s} test NLL {nll:.3f} nats (Gaussian {gaussian:.3f}, "
            f"NSF {NSF_NLL.get(name, float('nan')):.3f}); first step {timer.first_step:.0f}s, "
            f"then {steps - 1} steps in {timer.rest:.0f}s; evaluation NFE {nfe:.0f}, test "
            f"log_prob {eval_seconds:.0f}s (with its compile)", flush=True)
      density = np.exp(evaluate(model, grid)[0]).reshape(args.grid, args.grid)
      ax = axes[row, 1 + column]
      ax.imshow(density, origin="lower", extent=[-LIMIT, LIMIT, -LIMIT, LIMIT])
      ax.set_title(f"{method}: density (NLL {nll:.2f})")
      paths = trajectories(model, tf.random.stateless_normal([400, 2], [5, row]), 8)
      ax = axes[row, 1 + len(methods) + column]
      ax.plot(paths[:, :, 0], paths[:, :, 1], color="0.6", linewidth=0.4)
      ax.scatter(paths[0, :, 0], paths[0, :, 1], s=2, color="C0", label="t = 0")
      ax.scatter(paths[-1, :, 0], paths[-1, :, 1], s=2, color="C1", label="t = T")
      ax.set_title(f"{method}: trajectories")
      if row == 0 and column == 0:
        ax.legend(loc="lower right", fontsize=7, markerscale=3)
    for ax in axes[row]:
      ax.set_xlim(-LIMIT, LIMIT)
      ax.set_ylim(-LIMIT, LIMIT)
      ax.set_aspect("equal")
  fig.savefig(args.output, dpi=70, bbox_inches="tight")
  print(f"wrote {args.output}\n")
  print("| density | method | test NLL (nats) | Gaussian | NSF | first step s | train s "
        "(steps) | eval NFE | test log_prob s |")
  print("|---|---|---|---|---|---|---|---|---|")
  for name, method, nll, gaussian, nsf, first, rest, steps, nfe, seconds in rows:
    nsf_text = "-" if nsf is None else f"{nsf:.3f}"
    print(f"| {name} | {method} | {nll:.3f} | {gaussian:.3f} | {nsf_text} | {first:.0f} | "
          f"{rest:.0f} ({steps}) | {nfe:.0f} | {seconds:.0f} |")


if __name__ == "__main__":
  main()
