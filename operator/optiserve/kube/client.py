"""The only code that talks to the Kubernetes API.

Library: the official `kubernetes` client. It is public and typed, and it loads in-cluster and
kubeconfig credentials (with token refresh). kopf's own API helpers live in its private
`kopf._cogs` package and are async-only, so they are not a dependency to build on. We use the
client's generic `ApiClient` (`param_serialize` / `call_api` / `response_deserialize`) with plain
dicts rather than its generated per-kind methods, because:

- manifests come from typed builders as dicts (house style 7). The per-kind methods would turn
  them into `V1Job`/`V1Deployment` models and back, and one table of resource paths replaces
  five API classes;
- the generated `patch_*` methods pick a JSON-patch content type for any body, a trap with dict
  bodies; here every patch is an explicit JSON merge patch.

Calls are synchronous. kopf runs sync handlers in its thread pool, so a slow API call holds a
worker thread, never the event loop.

Errors: 429, 5xx and connection failures raise `TransientError` (the handler retries after a
delay). Any other refusal raises `ApiError` with the HTTP status.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from optiserve.api.crd import PLURAL
from optiserve.api.job import JobResult, RunningPass, running_pass
from optiserve.api.spec import API_GROUP, API_VERSION, KIND
from optiserve.domain.lifecycle import CandidateObservation, JobObservation, JobState
from optiserve.errors import DEFAULT_RETRY_S, OptiServeError, PermanentError
from optiserve.errors import TransientError as TransientError
from optiserve.resources.names import GENERATION_LABEL, MODEL_LABEL, VARIANT_LABEL, deployment_name, job_name, labels

if TYPE_CHECKING:
    from optiserve.kube.lease import LeaseApi
    from optiserve.kube.traffic import TrafficApi

logger = logging.getLogger(__name__)

Object = dict[str, Any]

# Label keys written by `resources.names.labels`, and the annotation the reconciler puts on
# Triton Deployments to say which artifact they serve (its value: the ArtifactRef.sha256).
ARTIFACT_ANNOTATION: Final = "optiserve.io/artifact-sha256"
JOB_NAME_LABEL: Final = "job-name"
"""Set on every pod of a Job by the Job controller."""
BASELINE: Final = "baseline"
CANDIDATE: Final = "candidate"
COMPARATOR: Final = "comparator"

MERGE_PATCH: Final = "application/merge-patch+json"
LOG_TAIL_LINES: Final = 200
"""How much of a running Job's log is read for its pass: the job's pass lines are a few per pass, but
a pass may log much in between (training progress); an older pass line out of the tail changes nothing."""

# Pod states that will not fix themselves: worth reporting while a candidate is not ready.
STUCK_WAITING_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


@dataclass(frozen=True)
class Resource:
    api_version: str
    kind: str
    plural: str
    spec_mutable: bool = True
    """False where the API refuses spec changes (a Job's pod template): adoption then patches
    metadata only."""

    def path(self, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
        root = f"/apis/{self.api_version}" if "/" in self.api_version else f"/api/{self.api_version}"
        parts = [root, "namespaces", namespace, self.plural, name, subresource]
        return "/".join(part for part in parts if part)


JOBS = Resource("batch/v1", "Job", "jobs", spec_mutable=False)
DEPLOYMENTS = Resource("apps/v1", "Deployment", "deployments")
SERVICES = Resource("v1", "Service", "services")
PODS = Resource("v1", "Pod", "pods")
OPTIMIZED_MODELS = Resource(f"{API_GROUP}/{API_VERSION}", KIND, PLURAL)
RESOURCES = {(r.api_version, r.kind): r for r in (JOBS, DEPLOYMENTS, SERVICES, PODS)}


KubeError = OptiServeError
"""Something the Kubernetes API refused or could not answer: a `TransientError`, `ApiError` or `AdoptionError`."""


class ApiError(PermanentError):
    """The API answered with an error that retrying the same request will not fix."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class AdoptionError(PermanentError):
    """A child's deterministic name is taken by an object that another controller owns."""


@dataclass(frozen=True)
class CandidateState:
    observation: CandidateObservation
    created: datetime | None
    """When the candidate Deployment was created: where the deploy deadline counts from."""


@dataclass(frozen=True)
class BaselineState:
    generation: int
    artifact_sha256: str
    ready: bool = False


def deployment_ready(deployment: Object) -> bool:
    """At least one ready replica of the Deployment's current spec."""
    status = deployment.get("status") or {}
    current = int(status.get("observedGeneration") or 0) >= int(_meta(deployment).get("generation") or 0)
    return current and int(status.get("readyReplicas") or 0) >= 1


def _selector(match: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(match.items()))


def _meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _labels(obj: Mapping[str, Any]) -> dict[str, str]:
    found = _meta(obj).get("labels")
    return found if isinstance(found, dict) else {}


def _artifact_sha256(meta: Mapping[str, Any]) -> str:
    """The `ArtifactRef.sha256` a Triton Deployment serves (its ARTIFACT_ANNOTATION); "" when unset."""
    return str((meta.get("annotations") or {}).get(ARTIFACT_ANNOTATION, ""))


def _generation(obj: Mapping[str, Any]) -> int:
    try:
        return int(_labels(obj).get(GENERATION_LABEL, "0"))
    except ValueError:
        return 0


def _timestamp(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def contains(live: object, desired: object) -> bool:
    """Whether `live` holds everything `desired` sets.

    The API server adds defaults (keys in dicts, never items in lists), so what we own is the
    keys we set: dicts compare as subsets, lists item by item with equal lengths.
    """
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(key in live and contains(live[key], value) for key, value in desired.items())
    if isinstance(desired, list):
        return isinstance(live, list) and len(live) == len(desired) and all(map(contains, live, desired))
    return bool(live == desired)


def owned_fields(manifest: Mapping[str, Any], spec_mutable: bool, scale_owned: bool = True) -> Object:
    """The part of a child we own and correct on adoption: its labels, annotations, owner and spec.

    Without ``scale_owned``, `spec.replicas` is left to whoever scales (the replica-ratio router).
    """
    meta = _meta(manifest)
    owned_meta = {key: meta[key] for key in ("labels", "annotations", "ownerReferences") if key in meta}
    owned: Object = {"metadata": owned_meta}
    if spec_mutable and "spec" in manifest:
        spec = dict(manifest["spec"])
        if not scale_owned:
            spec.pop("replicas", None)
        owned["spec"] = spec
    return owned


def job_state(job: Mapping[str, Any]) -> tuple[JobState, str]:
    """The Job's state from its final conditions (Complete / Failed), and why it failed."""
    conditions = (job.get("status") or {}).get("conditions") or []
    true = {c.get("type"): c for c in conditions if isinstance(c, dict) and c.get("status") == "True"}
    if "Failed" in true:
        failed = true["Failed"]
        detail = ": ".join(part for part in (failed.get("reason"), failed.get("message")) if part)
        return JobState.FAILED, detail or "the job failed"
    if "Complete" in true:
        return JobState.SUCCEEDED, ""
    return JobState.RUNNING, ""


def _first_container_status(pod: Mapping[str, Any]) -> dict[str, Any]:
    containers = (pod.get("spec") or {}).get("containers") or []
    first = containers[0].get("name") if containers else None
    statuses = [s for s in (pod.get("status") or {}).get("containerStatuses") or [] if isinstance(s, dict)]
    return next((s for s in statuses if s.get("name") == first), statuses[0] if statuses else {})


def _container_started(pod: Mapping[str, Any]) -> bool:
    """Whether the pod's (first) container has run at all, so that it has a log to read."""
    state = _first_container_status(pod).get("state") or {}
    return isinstance(state, dict) and bool(state.get("running") or state.get("terminated"))


def _newest_started(pods: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The newest pod whose container has started (a Job's retry replaces a failed pod)."""
    started = [pod for pod in pods if _container_started(pod)]
    return max(started, key=lambda pod: str(_meta(pod).get("creationTimestamp", ""))) if started else None


def job_result_from_pods(pods: Iterable[Mapping[str, Any]]) -> tuple[JobResult | None, str]:
    """The JobResult in the termination message of the newest finished pod, or why there is none."""
    newest_first = sorted(pods, key=lambda p: str(_meta(p).get("creationTimestamp", "")), reverse=True)
    for pod in newest_first:
        terminated = (_first_container_status(pod).get("state") or {}).get("terminated")
        if not isinstance(terminated, dict):
            continue
        message = str(terminated.get("message") or "")
        try:
            return JobResult.from_termination_message(message), ""
        except ValueError:
            exit_code, reason = terminated.get("exitCode"), terminated.get("reason") or "terminated"
            tail = f": {message.strip()[-500:]}" if message.strip() else ""
            return None, f"pod {_meta(pod).get('name')} ended {reason} (exit code {exit_code}) without a result{tail}"
    return None, "no finished pod of the job was found, so its result is unavailable"


def _telling_line(message: str) -> str:
    """The line of a container's termination message that says why it ended (with
    terminationMessagePolicy FallbackToLogsOnError, the message is its log's tail): the last line
    that reports an error, else the last line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or [""])[-1]


def pod_failure(pods: Iterable[Mapping[str, Any]]) -> str:
    """Why pods cannot become ready, when a pod says so (image pull, crash loop, scheduling)."""
    for pod in pods:
        name = _meta(pod).get("name")
        status = pod.get("status") or {}
        # Init containers first: the artifact check runs before Triton and says which file is wrong.
        for container in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
            state = container.get("state") or {}
            waiting = state.get("waiting") or {}
            last = (container.get("lastState") or {}).get("terminated") or {}
            if waiting.get("reason") in STUCK_WAITING_REASONS:
                # In a crash loop the kubelet's back-off text says nothing new; the last run's own words say why.
                detail = _telling_line(str(last.get("message") or "")) or waiting.get("message") or last.get("reason") or ""
                return f"pod {name}: container {container.get('name')}: {waiting['reason']}" + (f": {detail}" if detail else "")
            terminated = state.get("terminated") or {}
            if terminated and terminated.get("reason") not in (None, "Completed"):
                detail = _telling_line(str(terminated.get("message") or ""))
                return f"pod {name}: container {container.get('name')}: {terminated['reason']}" + (
                    f": {detail}" if detail else ""
                )
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable":
                return f"pod {name}: unschedulable: {condition.get('message', '')}"
    return ""


def failing_since(pods: Iterable[Mapping[str, Any]]) -> datetime | None:
    """When the newest pod that says why it cannot be ready was created: how long the latest
    attempt has been failing (a crash-looping pod stays; a deleted one is replaced by a new pod)."""
    created = [_timestamp(_meta(pod).get("creationTimestamp")) for pod in pods if pod_failure([pod])]
    known = [moment for moment in created if moment is not None]
    return max(known) if known else None


def _api_message(error: ApiException) -> str:
    """The API server's own `message` from a Status body, else the HTTP reason."""
    try:
        body = json.loads(error.body) if error.body else {}
    except ValueError:
        body = {}
    return str(body.get("message") or error.reason or "") if isinstance(body, dict) else str(error.reason or "")


def classify_api_error(error: ApiException, what: str, *, conflict_is_transient: bool = False) -> KubeError:
    """A `TransientError` (connection, 429, 5xx, and 409 where asked; retried after `Retry-After`)
    or an `ApiError` carrying the status; the text names `what` was being done."""
    status = int(error.status or 0)
    text = f"{what}: HTTP {status} {_api_message(error)}".strip()
    if status in (0, 429) or status >= 500 or (status == 409 and conflict_is_transient):
        retry_after = (error.headers or {}).get("Retry-After")
        try:
            delay = float(retry_after) if retry_after else DEFAULT_RETRY_S
        except ValueError:
            delay = DEFAULT_RETRY_S
        return TransientError(text, delay_s=delay)
    return ApiError(text, status)


class KubeClient:
    """Reads and writes OptiServe's children; owns no state besides the API connection."""

    def __init__(self, api: k8s.ApiClient, timeout_s: float = 30.0) -> None:
        self._api = api
        self._timeout = (min(10.0, timeout_s), timeout_s)

    @classmethod
    def from_environment(cls, connections: int | None = None) -> KubeClient:
        """In-cluster service account credentials, else the current kubeconfig context.

        `connections`: how many API connections to keep open, at least one per thread that
        calls the client (else urllib3 discards and re-opens them: a TLS handshake each)."""
        configuration = k8s.Configuration()
        if connections is not None:
            configuration.connection_pool_maxsize = connections
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except k8s_config.ConfigException:
            k8s_config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return cls(k8s.ApiClient(configuration))

    @classmethod
    def for_host(cls, host: str) -> KubeClient:
        """An unauthenticated client for a plain API endpoint (an emulator, `kubectl proxy`)."""
        return cls(k8s.ApiClient(k8s.Configuration(host=host)))

    def traffic_api(self) -> TrafficApi:
        """The same connection, for the traffic routers (HTTPRoute weights, replica counts)."""
        from optiserve.kube.traffic import TrafficApi

        return TrafficApi(self._api)

    def lease_api(self, namespace: str, name: str) -> LeaseApi:
        """The same connection, for the leader election's Lease."""
        from optiserve.kube.lease import LeaseApi

        return LeaseApi(self._api, namespace, name)

    @property
    def configuration(self) -> k8s.Configuration:
        configuration: k8s.Configuration = self._api.configuration
        return configuration

    def close(self) -> None:
        self._api.close()  # type: ignore[no-untyped-call]

    # --- plain verbs ---------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Object | None = None,
        content_type: str | None = None,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        return self._send(method, path, headers, query, body)

    def _get_text(self, path: str, query: list[tuple[str, str]]) -> str:
        """A GET whose answer is plain text (a pod's log), not a JSON object."""
        data = self._send("GET", path, {"Accept": "text/plain"}, query, None)
        return bytes(data).decode("utf-8", errors="replace")

    def _send(
        self, method: str, path: str, headers: dict[str, str], query: list[tuple[str, str]] | None, body: Object | None
    ) -> Any:
        what = f"{method} {path}"
        response_type = "object" if headers.get("Accept") == "application/json" else "bytearray"
        try:
            request = self._api.param_serialize(
                method=method,
                resource_path=path,
                query_params=query,
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self._api.call_api(*request, _request_timeout=self._timeout)
            response.read()  # type: ignore[no-untyped-call]
            return self._api.response_deserialize(response, {"2XX": response_type}).data
        except ApiException as e:
            raise classify_api_error(e, what) from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise TransientError(f"{what}: {e}") from e

    def get(self, resource: Resource, namespace: str, name: str) -> Object | None:
        try:
            found = self._call("GET", resource.path(namespace, name))
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        return dict(found)

    def select(self, resource: Resource, namespace: str, selector: str) -> list[Object]:
        """The objects whose labels match `selector`."""
        found = self._call("GET", resource.path(namespace), query=[("labelSelector", selector)])
        return [item for item in (found or {}).get("items") or [] if isinstance(item, dict)]

    def create(self, resource: Resource, namespace: str, body: Object) -> Object:
        return dict(self._call("POST", resource.path(namespace), body=body, content_type="application/json"))

    def patch(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        body: Object,
        subresource: str | None = None,
        field_manager: str | None = None,
    ) -> Object:
        query = [("fieldManager", field_manager)] if field_manager else None
        path = resource.path(namespace, name, subresource)
        return dict(self._call("PATCH", path, query=query, body=body, content_type=MERGE_PATCH))

    def delete(self, resource: Resource, namespace: str, name: str) -> bool:
        """Delete in the background (a Job's pods with it); False when it was already gone."""
        try:
            self._call(
                "DELETE",
                resource.path(namespace, name),
                body={"propagationPolicy": "Background"},
                content_type="application/json",
            )
        except ApiError as e:
            if e.status == 404:
                return False
            raise
        return True

    # --- observations --------------------------------------------------------------------------

    def observe_job(self, namespace: str, model: str, generation: int) -> JobObservation | None:
        """The optimization Job of this generation: while it runs, the pass its log says it is in;
        once it finished, its result."""
        name = job_name(model, generation)
        job = self.get(JOBS, namespace, name)
        if job is None:
            return None
        state, failure = job_state(job)
        if state is JobState.RUNNING:
            running = self.observe_running_pass(namespace, name)
            return JobObservation(generation, state, current_pass=running.label if running is not None else None)
        result, problem = job_result_from_pods(self.select(PODS, namespace, _selector({JOB_NAME_LABEL: name})))
        return JobObservation(generation, state, result, "; ".join(part for part in (failure, problem) if part))

    def observe_running_pass(self, namespace: str, job: str) -> RunningPass | None:
        """The pass the Job's newest started pod last wrote it began (`optiserve.api.job.running_pass`),
        from the tail of its log. None, and no error, where there is nothing to read yet or it cannot
        be read: no pod, a container not started, a log without a pass line, an API refusal or outage
        (the pass is a detail of the status; the reconcile goes on without it)."""
        try:
            pod = _newest_started(self.select(PODS, namespace, _selector({JOB_NAME_LABEL: job})))
            if pod is None:
                return None
            container = _first_container_status(pod).get("name")
            query = [("tailLines", str(LOG_TAIL_LINES))] + ([("container", str(container))] if container else [])
            log = self._get_text(PODS.path(namespace, str(_meta(pod).get("name", "")), "log"), query)
        except OptiServeError as e:
            level = logging.WARNING if isinstance(e, ApiError) and e.status == 403 else logging.DEBUG
            logger.log(level, "the running pass of job %s/%s is unknown: %s", namespace, job, e)
            return None
        return running_pass(log)

    def observe_candidate(self, namespace: str, model: str) -> CandidateState | None:
        """The candidate Deployment: its generation, artifact, readiness, and why it is stuck."""
        deployment = self.get(DEPLOYMENTS, namespace, deployment_name(model, CANDIDATE))
        if deployment is None:
            return None
        meta = _meta(deployment)
        generation = _generation(deployment)
        ready = deployment_ready(deployment)
        failure, since = "", None
        if not ready:
            match = dict(((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {})
            pods = self.select(PODS, namespace, _selector({**match, GENERATION_LABEL: str(generation)}))
            failure, since = pod_failure(pods), failing_since(pods)
        observation = CandidateObservation(
            generation=generation,
            artifact_sha256=_artifact_sha256(meta),
            ready=ready,
            failure=failure,
            failing_since=since,
        )
        return CandidateState(observation, _timestamp(meta.get("creationTimestamp")))

    def observe_baseline(self, namespace: str, model: str) -> BaselineState | None:
        """The baseline Deployment (what serves now); None before the first promotion."""
        baseline = self.get(DEPLOYMENTS, namespace, deployment_name(model, BASELINE))
        if baseline is None:
            return None
        meta = _meta(baseline)
        return BaselineState(
            generation=_generation(baseline), artifact_sha256=_artifact_sha256(meta), ready=deployment_ready(baseline)
        )

    def remove_annotations(self, namespace: str, model: str, keys: Iterable[str]) -> None:
        """Drop one-shot annotations (promote, abort) from the OptimizedModel once acted on."""
        self.patch(OPTIMIZED_MODELS, namespace, model, {"metadata": {"annotations": dict.fromkeys(keys)}})

    def retire_candidate(self, namespace: str, model: str) -> None:
        """Remove the candidate Deployment and Service, and the comparator that probed it (after a
        promotion made them redundant, or a rollback)."""
        for name in (deployment_name(model, CANDIDATE), deployment_name(model, COMPARATOR)):
            self.delete(DEPLOYMENTS, namespace, name)
            self.delete(SERVICES, namespace, name)

    # --- actions -------------------------------------------------------------------------------

    def ensure(self, manifest: Object, scale_owned: bool = True) -> Object:
        """Create the child, or adopt the one that already has its deterministic name.

        Create first: "already exists" is the normal answer after a restart, and reading it
        back then is the adoption. The adopted object is patched only where it differs in what
        we own (see `owned_fields`); an object that another controller owns is not touched.
        """
        resource = RESOURCES[(manifest["apiVersion"], manifest["kind"])]
        meta = _meta(manifest)
        namespace, name = str(meta["namespace"]), str(meta["name"])
        what = f"{resource.kind} {namespace}/{name}"
        try:
            created = self.create(resource, namespace, manifest)
        except ApiError as e:
            if e.status != 409:
                raise
        else:
            logger.info("created %s", what)
            return created
        live = self.get(resource, namespace, name)
        if live is None or _meta(live).get("deletionTimestamp"):
            raise TransientError(f"{what} exists but is being deleted; retrying")
        ours = {ref.get("uid") for ref in meta.get("ownerReferences") or [] if ref.get("controller")}
        theirs = {ref.get("uid") for ref in _meta(live).get("ownerReferences") or [] if ref.get("controller")}
        if theirs and not theirs & ours:
            raise AdoptionError(f"{what} already exists and is controlled by another owner; not adopting it")
        desired = owned_fields(manifest, resource.spec_mutable, scale_owned)
        if contains(live, desired):
            return live
        logger.info("adopting %s: patching the fields it differs in", what)
        return self.patch(resource, namespace, name, desired)

    def remove_children(self, namespace: str, model: str, owner_uid: str) -> list[str]:
        """Delete every Job, Deployment and Service this model owns (its OptimizedModel is going away).

        Owned means: the model's label and a controller reference to `owner_uid`. The label finds
        them; the uid makes sure a same-named model's objects, or objects someone else made
        with our label, are left alone. Pods and ReplicaSets go with their Job or Deployment
        (background propagation)."""
        removed = []
        for resource in (JOBS, DEPLOYMENTS, SERVICES):
            for obj in self.select(resource, namespace, _selector({MODEL_LABEL: model})):
                meta = _meta(obj)
                owners = {ref.get("uid") for ref in meta.get("ownerReferences") or [] if ref.get("controller")}
                name = str(meta.get("name"))
                if owner_uid in owners and _labels(obj).get(MODEL_LABEL) == model and self.delete(resource, namespace, name):
                    logger.info("removed %s %s/%s with its OptimizedModel", resource.kind, namespace, name)
                    removed.append(f"{resource.kind}/{name}")
        return removed

    def remove_stale(self, namespace: str, model: str, generation: int) -> list[str]:
        """Delete this model's Jobs and Deployments of other generations, never the baseline."""
        removed = []
        for resource in (JOBS, DEPLOYMENTS):
            for obj in self.select(resource, namespace, _selector(labels(model))):
                obj_labels = _labels(obj)
                stale = (
                    obj_labels.get(MODEL_LABEL) == model  # the server filtered; check anyway before deleting
                    and obj_labels.get(VARIANT_LABEL) != BASELINE
                    and obj_labels.get(GENERATION_LABEL) not in (None, str(generation))
                    and not _meta(obj).get("deletionTimestamp")
                )
                name = str(_meta(obj).get("name"))
                if stale and self.delete(resource, namespace, name):
                    logger.info("removed stale %s %s/%s", resource.kind, namespace, name)
                    removed.append(f"{resource.kind}/{name}")
        return removed
