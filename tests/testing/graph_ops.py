"""Which ops a traced function holds, and the op that marks TF's default RNG algorithm.

* `op_types(fn, *args)`: the op types of `tf.function(fn)`'s graph for `args`,
  including those of the functions in its library (loop bodies, conds, custom
  gradients).
* `AUTO_SELECT_OP`: a stateless random op left at TF's default algorithm
  ("auto_select") derives its key and counter with this op, which under XLA costs far
  more than the draw with the algorithm named (benchmarks/RESULTS.md).
"""

import tensorflow as tf

__all__ = ["AUTO_SELECT_OP", "op_types"]

AUTO_SELECT_OP = "StatelessRandomGetKeyCounter"


def op_types(fn, *args):
  """The set of op types in `tf.function(fn)` traced for `args`, library included."""
  graph = tf.function(fn).get_concrete_function(*args).graph
  types = {op.type for op in graph.get_operations()}
  for function in graph.as_graph_def().library.function:
    types |= {node.op for node in function.node_def}
  return types
