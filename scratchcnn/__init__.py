"""scratchcnn: a convolutional network written by hand in NumPy, proven equal to Flax."""

__version__ = "0.1.0"
