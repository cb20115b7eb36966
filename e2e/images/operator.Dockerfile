# The operator image built with no registry: FROM the Debian root filesystem made by
# e2e/images/build.py, installing wheels it downloaded beforehand (no network in the build).
# `optiserve operator` (the chart's Deployment), `optiserve comparator` and `optiserve verify-artifact`.
ARG BASE
FROM ${BASE} AS build
COPY wheels /wheels
RUN python3 -m venv /opt/optiserve \
 && /opt/optiserve/bin/pip install --no-index --find-links /wheels --no-cache-dir -q -r /wheels/requirements.txt \
 && /opt/optiserve/bin/pip install --no-index --no-deps --no-cache-dir -q /wheels/project/*.whl \
 && /opt/optiserve/bin/python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('torch', 'onnxruntime', 'tensorrt')))"

FROM ${BASE}
COPY --from=build /opt/optiserve /opt/optiserve
ENV PATH=/opt/optiserve/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
# Numeric, so the kubelet can check runAsNonRoot without reading /etc/passwd.
USER 10001:10001
ENTRYPOINT ["optiserve"]
CMD ["operator"]
