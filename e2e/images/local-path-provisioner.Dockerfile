# Rancher's local-path provisioner, built from its Go module by e2e/node/build.sh, on the project's
# base; its helper pods (mkdir, rm of a volume's directory) run this image too.
ARG BASE
FROM ${BASE}
COPY local-path-provisioner /usr/local/bin/local-path-provisioner
ENTRYPOINT ["local-path-provisioner"]
