# Traefik built from its Go module (e2e/node/build.sh): the suite's Gateway API data plane, whose
# Kubernetes Gateway provider turns the operator's HTTPRoute weights into a weighted round robin.
ARG BASE
FROM ${BASE}
COPY traefik /usr/local/bin/traefik
USER 65532:65532
ENTRYPOINT ["traefik"]
