"""Step-level bookkeeping of `FlowModel.fit`: the finite-update guard and the loss maximum.

A non-finite batch (NaN or inf in the data, or a diverged loss) must never reach the
weights: `all_finite` decides, in the step and identically on every replica, whether
the loss and gradients are finite; `apply_if` applies the update only then (a `tf.cond`:
no host sync, XLA-compatible); `StepGuard` records the first skipped step and
`NonFiniteStop` ends `fit` with an error naming it. `Maximum` and `global_mean` give
the per-epoch maximum of the global-batch step loss (`loss_max`), which shows a spike
the epoch mean hides.
"""

import math

import keras
import tensorflow as tf

__all__ = ["global_mean", "Maximum", "all_finite", "apply_if", "StepGuard",
           "NonFiniteStop"]


def global_mean(value, weight):
  """The weighted mean of `value` over the replicas' batches: the global batch's value."""
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return value
  weight = tf.cast(weight, value.dtype)
  total, count = context.all_reduce(tf.distribute.ReduceOp.SUM, [value * weight, weight])
  return total / count


class Maximum(keras.metrics.Metric):
  """The largest value since the last reset (Keras has no maximum metric).

  Under tf.distribute every replica updates it with the same (global) value, so the
  replicas' copies agree and their "mean" on read is that value.
  """

  def __init__(self, name, dtype=None):
    super().__init__(name=name, dtype=dtype)
    self.maximum = self.add_variable(shape=(), initializer=keras.initializers.Constant(
        -math.inf), aggregation="mean", name="maximum")

  def update_state(self, value):
    self.maximum.assign(tf.maximum(self.maximum, tf.cast(value, self.dtype)))

  def reset_state(self):
    self.maximum.assign(-math.inf)

  def result(self):
    return tf.convert_to_tensor(self.maximum)


def all_finite(tensors, num_examples):
  """`(finite, empty)` of a step, identical on every replica (one all-reduce under tf.distribute).

  `finite`: every tensor is finite on every replica. All replicas must agree: they
  either all apply a step (whose gradients are summed across them) or all skip it.
  `empty`: some replica's batch had no rows (`num_examples`, the replica's rows, is 0),
  which is why its loss is not finite.
  """
  flags = [tf.reduce_all(tf.math.is_finite(
      t.values if isinstance(t, tf.IndexedSlices) else t)) for t in tensors if t is not None]
  finite = tf.reduce_all(tf.stack(flags))
  empty = tf.equal(num_examples, 0)
  context = tf.distribute.get_replica_context()
  if context is not None and context.num_replicas_in_sync > 1:
    counts = context.all_reduce(tf.distribute.ReduceOp.SUM,
                                tf.cast(tf.stack([~finite, empty]), tf.float32))
    finite, empty = tf.equal(counts[0], 0.0), counts[1] > 0.0
  return finite, empty


def apply_if(finite, optimizer, gradients, variables):
  """`optimizer.apply(gradients, variables)` if `finite`, else nothing (no state changes).

  A `tf.cond`, so no host sync and XLA-compatible. Under strategies that use
  `merge_call` (MirroredStrategy on CPU) the optimizer's update calls `merge_call`,
  which a branch of a cond in replica context may not: the cond then runs in
  cross-replica context around the per-replica updates, as Keras' LossScaleOptimizer
  does.
  """
  def apply():
    optimizer.apply(gradients, variables)

  if tf.__internal__.distribute.strategy_supports_no_merge_call():
    tf.cond(finite, apply, lambda: None)
    return

  def cross_replica(strategy, finite, gradients):
    finite = strategy.experimental_local_results(finite)[0]
    tf.cond(finite, lambda: strategy.extended.call_for_each_replica(
        optimizer.apply, args=(gradients, variables)), lambda: None)

  tf.distribute.get_replica_context().merge_call(cross_replica, args=(finite, gradients))


class StepGuard:
  """Counts training steps and records the first whose loss or gradients were not finite.

  Plain `tf.Variable`s in a holder Keras does not track: bookkeeping of one `fit`, not
  model state (not saved, not in `model.variables`). Written in the step, read by the
  host between steps.
  """

  def __init__(self):
    options = {"trainable": False, "synchronization": tf.VariableSynchronization.ON_WRITE,
               "aggregation": tf.VariableAggregation.ONLY_FIRST_REPLICA}
    self.steps = tf.Variable(0, dtype=tf.int64, name="steps", **options)
    self.first_bad = tf.Variable(-1, dtype=tf.int64, name="first_non_finite", **options)
    # Whether that step left a replica without rows (its loss, a mean over none, is NaN).
    self.first_bad_empty = tf.Variable(False, name="first_non_finite_empty", **options)

  def clean(self):
    """Whether no step since the last `reset` was non-finite (a bool tensor)."""
    return self.first_bad < 0

  def record(self, finite, empty):
    """Counts a step; `finite` and `empty` as `all_finite` gives them."""
    first = tf.logical_and(self.first_bad < 0, tf.logical_not(finite))
    self.first_bad_empty.assign(tf.where(first, empty, self.first_bad_empty))
    self.first_bad.assign(tf.where(first, self.steps, self.first_bad))
    self.steps.assign_add(1)

  def reset(self):
    self.steps.assign(0)
    self.first_bad.assign(-1)
    self.first_bad_empty.assign(False)

  def raise_if_non_finite(self, first_step_of_epoch=0, epoch=None, skipped=0):
    """Raises `FloatingPointError` if a step since the last `reset` was not finite.

    Args:
      first_step_of_epoch: the step count when the epoch began.
      epoch: the 0-based epoch, to name it and the batch in it; None names the step only.
      skipped: the batches at the start of the epoch that a resumed fit skipped without
        a step (`tfp_flows.callbacks.BackupAndRestore`).
    """
    bad = int(self.first_bad.numpy())
    if bad < 0:
      return
    where = ""
    if epoch is not None:
      where = f" (epoch {epoch + 1}, batch {bad - first_step_of_epoch + skipped + 1})"
    kept = ("The step was not applied: the weights and optimizer state are those "
            "before it.")
    if bool(self.first_bad_empty.numpy()):
      raise FloatingPointError(
          f"training step {bad + 1}{where} had no rows to train on, on at least one "
          "replica: its batch was empty or had fewer rows than the distribution "
          "strategy's replicas, and a loss over no rows is NaN. Batch the dataset with "
          "drop_remainder=True, or so that every batch has at least one row per "
          f"replica. {kept}")
    raise FloatingPointError(
        f"non-finite loss or gradient at training step {bad + 1}{where}: check the data "
        "for NaN/inf, and under XLA (which cannot raise, so a bad row becomes NaN) for "
        "inputs outside their range too: pixels that are not the raw integers in "
        "[0, 2**num_bits) (not scaled to [0, 1]), class labels outside [0, num_classes). "
        f"{kept} If the data are valid the training diverged; lower the learning rate or "
        "clip the gradients.")


class NonFiniteStop(keras.callbacks.Callback):
  """Ends `fit` with the `StepGuard`'s error after a non-finite step (FlowModel.fit adds it)."""

  def __init__(self, guard):
    super().__init__()
    self.guard = guard
    self.epoch, self.first_step_of_epoch = 0, 0
    self.skipped, self.stepped = 0, False

  def on_train_begin(self, logs=None):
    self.guard.reset()

  def on_epoch_begin(self, epoch, logs=None):
    self.epoch, self.first_step_of_epoch = epoch, int(self.guard.steps.numpy())
    self.skipped, self.stepped = 0, False

  def on_train_batch_end(self, batch, logs=None):
    # Batches that ended before the epoch's first step were skipped by a resumed fit.
    # Counted only then: Keras numbers a last, partial execution of steps_per_execution
    # steps as if it were whole.
    if not self.stepped:
      self.stepped = int(self.guard.steps.numpy()) > self.first_step_of_epoch
      if not self.stepped:
        self.skipped = batch + 1
    self.guard.raise_if_non_finite(self.first_step_of_epoch, self.epoch, self.skipped)
