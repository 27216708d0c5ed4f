"""The TensorFlow back end: the emitter (IR -> tf.function), SavedModel and TFLite writers and
runners, and :mod:`backend` (its stages). Importing it imports TensorFlow the quiet way
(:func:`graph_convert.process.import_tensorflow`)."""
from __future__ import annotations

from graph_convert.process import import_tensorflow

import_tensorflow()
