"""PyTorch re-implementations of the Keras networks, and the Keras .h5 weight loader."""
