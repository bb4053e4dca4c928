"""genscale: train, evaluate and serve generative models; measure whether data or compute buys quality."""

__version__ = "0.1.0"
