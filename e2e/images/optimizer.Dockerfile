# The optimization Job's image for ONNX sources, built with no registry: the project with its
# `optimizer` extra except torch (ONNX sources need no torch: export, graph optimization,
# quantization, the gates and the benchmark run on ONNX Runtime). A PyTorch source needs the full
# image (optimizer_jobs/docker/Dockerfile.cpu), which carries torch and its CUDA libraries.
ARG BASE
FROM ${BASE} AS build
COPY wheels /wheels
RUN python3 -m venv /opt/optiserve \
 && /opt/optiserve/bin/pip install --no-index --find-links /wheels --no-cache-dir -q -r /wheels/requirements.txt \
 && /opt/optiserve/bin/pip install --no-index --no-deps --no-cache-dir -q /wheels/project/*.whl \
 && /opt/optiserve/bin/python -c "import importlib.util as u, sys, onnxruntime, optiserve_jobs; sys.exit(u.find_spec('torch') is not None)"

FROM ${BASE}
COPY --from=build /opt/optiserve /opt/optiserve
ENV PATH=/opt/optiserve/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HOME=/tmp
USER 10001:10001
ENTRYPOINT ["python", "-m", "optiserve_jobs"]
