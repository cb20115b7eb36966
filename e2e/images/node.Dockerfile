# The real-pod tier's node: Debian's containerd, runc and CNI plugins, and the Kubernetes components
# built from source here (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
# kube-proxy, CoreDNS), started by e2e/node/entrypoint.sh. Run it privileged, /var/lib/containerd
# on a volume (containerd's overlay snapshots cannot sit on the container's own overlay).
ARG BASE
FROM ${BASE}
COPY bin/ /usr/local/bin/
COPY entrypoint.sh /usr/local/bin/entrypoint.sh
VOLUME ["/var/lib/containerd", "/var/lib/kubelet"]
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
