# A CPU Triton Inference Server image: the `tritonserver` 2.51 of the nvidia-pytriton wheel with its
# Python backend, and an environment of its own (numpy<2, onnxruntime) for the Python-backend stub,
# the same server local mode runs. For CPU clusters; NVIDIA's image stays the production default.
# `tritonserver` on PATH is a wrapper that adds the backend directory and the server's libraries.
ARG BASE
FROM ${BASE} AS build
COPY wheels /wheels
RUN python3 -m venv /opt/triton/venv \
 && /opt/triton/venv/bin/pip install --no-index --find-links /wheels --no-cache-dir -q -r /wheels/requirements.txt \
 && /opt/triton/venv/bin/python -c "import numpy, onnxruntime; assert numpy.__version__.startswith('1.')"
COPY dist /opt/triton/dist
RUN cp /opt/triton/dist/pytriton/tritonserver/python_backend_stubs/3.11/triton_python_backend_stub \
       /opt/triton/dist/pytriton/tritonserver/backends/python/triton_python_backend_stub

FROM ${BASE}
COPY --from=build /opt/triton /opt/triton
COPY tritonserver /usr/local/bin/tritonserver
ENV PATH=/opt/triton/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
# The triton-server user of NVIDIA's image, which the operator's Deployment runs as.
USER 1000:1000
ENTRYPOINT ["tritonserver"]
