"""The Kubernetes calls of the traffic routers: HTTPRoutes, the variants' replica counts, the model Service.

Library: the official `kubernetes` client's typed APIs. HTTPRoute is a custom resource, so it goes
through `CustomObjectsApi` as a plain dict; Deployments and Services through `AppsV1Api` and
`CoreV1Api`. Every patch is an explicit JSON merge patch (`_content_type`): the generated methods
would otherwise pick a JSON-patch content type for a dict body.

Optimistic concurrency: a route's rules are written back with the `resourceVersion` they were
read at, so a concurrent edit (the user's, a GitOps sync) makes the write fail with 409 instead of
being overwritten; that is a `TransientError` and the router re-reads on the next try.

Errors use the classes of `kube.client`: 429, 5xx, 409 conflicts on writes and lost connections
are `TransientError`; other refusals `ApiError` with the HTTP status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from optiserve.errors import TransientError
from optiserve.kube.client import ApiError, classify_api_error
from optiserve.resources.httproute import GATEWAY_GROUP

MERGE_PATCH: Final = "application/merge-patch+json"
HTTPROUTE_VERSION: Final = "v1"
HTTPROUTES: Final = "httproutes"
Object = dict[str, Any]


@dataclass(frozen=True)
class Replicas:
    """A Deployment's replica counts: what its spec asks for and how many are ready."""

    desired: int
    ready: int


class TrafficApi:
    """Reads and writes what decides the split; keeps no state besides the API connection."""

    def __init__(self, api: k8s.ApiClient, timeout_s: float = 30.0) -> None:
        self._custom = k8s.CustomObjectsApi(api)
        self._apps = k8s.AppsV1Api(api)
        self._core = k8s.CoreV1Api(api)
        self._timeout = (min(10.0, timeout_s), timeout_s)

    def _call(self, what: str, method: Any, *args: Any, conflict_is_transient: bool = False, **kwargs: Any) -> Any:
        try:
            return method(*args, _request_timeout=self._timeout, **kwargs)
        except ApiException as e:
            raise classify_api_error(e, what, conflict_is_transient=conflict_is_transient) from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise TransientError(f"{what}: {e}") from e

    def _get(self, what: str, method: Any, *args: Any) -> Any:
        try:
            return self._call(what, method, *args)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    # --- HTTPRoute ---------------------------------------------------------------------------

    def get_route(self, namespace: str, name: str) -> Object | None:
        found = self._get(
            f"get HTTPRoute {namespace}/{name}",
            self._custom.get_namespaced_custom_object,
            GATEWAY_GROUP,
            HTTPROUTE_VERSION,
            namespace,
            HTTPROUTES,
            name,
        )
        return None if found is None else dict(found)

    def create_route(self, manifest: Object) -> None:
        meta = manifest["metadata"]
        self._call(
            f"create HTTPRoute {meta['namespace']}/{meta['name']}",
            self._custom.create_namespaced_custom_object,
            GATEWAY_GROUP,
            HTTPROUTE_VERSION,
            meta["namespace"],
            HTTPROUTES,
            manifest,
        )

    def patch_route(self, namespace: str, name: str, resource_version: str, patch: Object) -> Object:
        """Merge `patch` into the route if it is still at `resource_version` (else TransientError)."""
        body = {**patch, "metadata": {**patch.get("metadata", {}), "resourceVersion": resource_version}}
        return dict(
            self._call(
                f"patch HTTPRoute {namespace}/{name}",
                self._custom.patch_namespaced_custom_object,
                GATEWAY_GROUP,
                HTTPROUTE_VERSION,
                namespace,
                HTTPROUTES,
                name,
                body,
                conflict_is_transient=True,
                _content_type=MERGE_PATCH,
            )
        )

    # --- Deployments ---------------------------------------------------------------------------

    def get_replicas(self, namespace: str, name: str) -> Replicas | None:
        deployment = self._get(f"get Deployment {namespace}/{name}", self._apps.read_namespaced_deployment, name, namespace)
        if deployment is None:
            return None
        spec_replicas = deployment.spec.replicas if deployment.spec is not None else None
        ready = deployment.status.ready_replicas if deployment.status is not None else None
        return Replicas(desired=1 if spec_replicas is None else int(spec_replicas), ready=int(ready or 0))

    def scale(self, namespace: str, name: str, replicas: int) -> None:
        self._call(
            f"scale Deployment {namespace}/{name} to {replicas}",
            self._apps.patch_namespaced_deployment,
            name,
            namespace,
            {"spec": {"replicas": replicas}},
            conflict_is_transient=True,
            _content_type=MERGE_PATCH,
        )

    # --- Services ------------------------------------------------------------------------------

    def get_service(self, namespace: str, name: str) -> Object | None:
        found = self._get(f"get Service {namespace}/{name}", self._core.read_namespaced_service, name, namespace)
        return None if found is None else dict(self._core.api_client.sanitize_for_serialization(found))

    def create_service(self, manifest: Object) -> bool:
        """Create the Service; False when one of that name already exists (the caller reads and judges it)."""
        meta = manifest["metadata"]
        try:
            self._call(
                f"create Service {meta['namespace']}/{meta['name']}",
                self._core.create_namespaced_service,
                meta["namespace"],
                manifest,
            )
        except ApiError as e:
            if e.status == 409:
                return False
            raise
        return True
