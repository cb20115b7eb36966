"""Structured pruning and distillation on PyTorch modules: the work behind the prune and distill passes."""
