"""Policy checks on rendered manifests: each returns the violations it found, as sentences.

- pod security: the `restricted` Pod Security Standard (Kubernetes' own list of checks), plus our
  house rules: a read-only root filesystem and CPU and memory requests and limits on every container;
- RBAC: no wildcard anywhere in a rule, and none of the verbs that grant more than they name;
- images: only from the allowed registries.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

Object = Mapping[str, Any]

ALLOWED_REGISTRIES = ("ghcr.io/optiserve/", "nvcr.io/nvidia/")
"""Where OptiServe's own images (operator, optimizer) and NVIDIA's Triton images come from."""
RESTRICTED_VOLUME_TYPES = frozenset(
    {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
)
ESCALATING_VERBS = frozenset({"escalate", "bind", "impersonate"})


def _containers(pod: Object) -> Iterator[tuple[str, Object]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for container in pod.get(field) or []:
            yield f"{field}[{container.get('name')}]", container


def _effective(pod: Object, container: Object, key: str) -> Any:
    """A security field as the kubelet applies it: the container's, else the pod's."""
    own = (container.get("securityContext") or {}).get(key)
    return own if own is not None else (pod.get("securityContext") or {}).get(key)


def restricted_violations(where: str, pod: Object) -> list[str]:
    """What the `restricted` Pod Security level would refuse in this pod spec."""
    found = _pod_level_violations(where, pod)
    for name, container in _containers(pod):
        found.extend(_container_violations(f"{where} {name}", pod, container))
    return found


def _pod_level_violations(where: str, pod: Object) -> list[str]:
    found = [f"{where}: {host} is true" for host in ("hostNetwork", "hostPID", "hostIPC") if pod.get(host)]
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            found.append(f"{where}: volume {volume.get('name')} has type {sorted(kinds - RESTRICTED_VOLUME_TYPES)}")
    if (pod.get("securityContext") or {}).get("runAsUser") == 0:
        found.append(f"{where}: securityContext.runAsUser is 0")
    return found


def _container_violations(at: str, pod: Object, container: Object) -> list[str]:
    security = container.get("securityContext") or {}
    found = _capability_violations(at, security)
    if security.get("privileged"):
        found.insert(0, f"{at}: privileged")
    if _effective(pod, container, "runAsNonRoot") is not True:
        found.append(f"{at}: runAsNonRoot is not true")
    if security.get("runAsUser") == 0:
        found.append(f"{at}: runAsUser is 0")
    seccomp = (_effective(pod, container, "seccompProfile") or {}).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        found.append(f"{at}: seccompProfile.type is {seccomp!r}, not RuntimeDefault or Localhost")
    found.extend(f"{at}: hostPort {port['hostPort']}" for port in container.get("ports") or [] if port.get("hostPort"))
    return found


def _capability_violations(at: str, security: Object) -> list[str]:
    found = []
    if security.get("allowPrivilegeEscalation") is not False:
        found.append(f"{at}: allowPrivilegeEscalation is not false")
    capabilities = security.get("capabilities") or {}
    if "ALL" not in (capabilities.get("drop") or []):
        found.append(f"{at}: capabilities.drop lacks ALL")
    if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
        found.append(f"{at}: capabilities.add {capabilities['add']}")
    return found


def house_violations(where: str, pod: Object) -> list[str]:
    """Beyond `restricted`: read-only root filesystems, and requests and limits for CPU and memory."""
    found = []
    for name, container in _containers(pod):
        at = f"{where} {name}"
        if (container.get("securityContext") or {}).get("readOnlyRootFilesystem") is not True:
            found.append(f"{at}: readOnlyRootFilesystem is not true")
        resources = container.get("resources") or {}
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if not (resources.get(kind) or {}).get(resource):
                    found.append(f"{at}: no {kind}.{resource}")
    return found


def image_violations(where: str, pod: Object, allowed: Sequence[str] = ALLOWED_REGISTRIES) -> list[str]:
    found = []
    for name, container in _containers(pod):
        image = str(container.get("image", ""))
        if not image.startswith(tuple(allowed)):
            found.append(f"{where} {name}: image {image!r} is not from {', '.join(allowed)}")
        elif "@" not in image and ":" not in image.rsplit("/", 1)[-1]:
            found.append(f"{where} {name}: image {image!r} has neither tag nor digest")
    return found


def rbac_violations(objects: Iterable[Object]) -> list[str]:
    """Wildcards and escalating verbs in any Role or ClusterRole rule."""
    found = []
    for obj in objects:
        if obj.get("kind") not in ("Role", "ClusterRole"):
            continue
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj.get("aggregationRule"):
            found.append(f"{where}: aggregationRule (its rules would come from elsewhere)")
        for index, rule in enumerate(obj.get("rules") or []):
            for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                values = rule.get(field) or []
                if any("*" in str(value) for value in values):
                    found.append(f"{where} rules[{index}].{field}: wildcard in {values}")
            escalating = ESCALATING_VERBS & set(rule.get("verbs") or [])
            if escalating:
                found.append(f"{where} rules[{index}].verbs: {sorted(escalating)}")
            if "secrets" in (rule.get("resources") or []):
                found.append(f"{where} rules[{index}].resources: secrets")
    return found
