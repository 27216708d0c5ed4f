"""TensorFlow side: the emitter (IR -> tf.function), SavedModel and TFLite writers and runners."""
