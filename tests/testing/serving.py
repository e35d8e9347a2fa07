"""The opening of a serving script that runs in a fresh process without TFP or tfp_flows.

Export tests serve SavedModels from `python -c SERVER_PREAMBLE + <their calls>`: the
preamble makes importing `tfp_flows` or `tensorflow_probability` raise, so a signature
that still needs either fails, and defines `load_session(directory)`, the TF1 session
loader that TensorFlow Serving uses, cached per directory.
"""

import textwrap

__all__ = ["SERVER_PREAMBLE"]

SERVER_PREAMBLE = textwrap.dedent("""
    import importlib.abc
    import json
    import sys

    class _Forbidden(importlib.abc.MetaPathFinder):
      def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tfp_flows", "tensorflow_probability"):
          raise ImportError(f"serving must not need {name}")
        return None

    sys.meta_path.insert(0, _Forbidden())

    import numpy as np
    import tensorflow as tf

    sessions = {}

    def load_session(directory):
      if directory not in sessions:
        graph = tf.Graph()
        session = tf.compat.v1.Session(graph=graph)
        with graph.as_default():
          meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], directory)
        sessions[directory] = session, meta_graph
      return sessions[directory]
""")
