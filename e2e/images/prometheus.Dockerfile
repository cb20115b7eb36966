# Prometheus built from its Go module (e2e/node/build.sh): Debian's package is built without
# Kubernetes service discovery, which scraping pods in the cluster needs.
ARG BASE
FROM ${BASE}
COPY prometheus /usr/local/bin/prometheus
USER 65534:65534
ENTRYPOINT ["prometheus"]
