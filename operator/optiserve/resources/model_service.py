"""The model's own Service: one name for clients, in front of both variants' Triton pods.

It selects on the model label only, so kube-proxy spreads connections over every ready pod of the
baseline and the candidate alike, and the replica ratio is the traffic split (provider
`replicas`). The optimization Job's pods carry the model label too, but they have no port named
`http`, and a Service whose target port is a name only sends to pods that declare it.
"""

from __future__ import annotations

from typing import Any

from optiserve.resources.names import MODEL_LABEL, labels
from optiserve.resources.pod import Owner
from optiserve.resources.triton_deployment import GRPC_PORT, HTTP_PORT


def model_service_name(model: str) -> str:
    return model


def model_selector(model: str) -> dict[str, str]:
    return {MODEL_LABEL: model}


def build_model_service(owner: Owner, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": model_service_name(owner.name),
            "namespace": namespace,
            "labels": labels(owner.name),
            "ownerReferences": [owner.reference()],
        },
        "spec": {
            "selector": model_selector(owner.name),
            "ports": [
                {"name": name, "port": port, "targetPort": name} for name, port in (("http", HTTP_PORT), ("grpc", GRPC_PORT))
            ],
        },
    }
