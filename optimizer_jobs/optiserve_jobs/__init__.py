"""The optimization Job: export, optimize, quantize, validate, benchmark and publish a Triton repository.

Heavy dependencies (torch, onnxruntime, transformers) are imported inside the functions that use
them, so that importing this package stays cheap.
"""
