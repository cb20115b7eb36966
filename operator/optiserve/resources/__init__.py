"""Pure builders of what OptiServe creates: Kubernetes objects and Triton model configurations."""
