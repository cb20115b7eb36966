"""Local, cluster-free helpers: run Triton Inference Server as a child process."""
