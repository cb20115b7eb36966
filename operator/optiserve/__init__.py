"""OptiServe: optimize a model, prove it, serve it on Triton, canary it, promote or roll back."""

__version__ = "0.1.0"
