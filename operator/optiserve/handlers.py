"""kopf registrations: thin adapters from kopf's causes to the one `reconcile`.

Handlers are registered on a registry built by `build_registry(settings, kube)`, not on kopf's
global registry at import time. The operator's dependencies (its settings and API client) are
passed in rather than read from globals, and tests can run the operator in-process against an
emulated API without leftovers between operators. kopf logs in with the same client's
credentials (`login`), so kopf and the reconciler always reach the same API server as the same
identity.

Create, update, resume and the timer all call the same level-based reconcile. The timer is what
notices the children change (a Job finishing, a Deployment becoming ready). It waits one
interval before its first run, so it seldom overlaps the create handler on a new resource. When
the two do overlap, both reconciles are idempotent: the second create finds the child and adopts
it.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import kopf
from kubernetes import client as k8s

from optiserve.api.crd import PLURAL
from optiserve.api.spec import API_GROUP, API_VERSION
from optiserve.kube.client import AdoptionError, KubeClient, KubeError, TransientError
from optiserve.reconciler import reconcile
from optiserve.settings import Settings

PREFIX = "optiserve.io"
ADOPTION_RETRY_S = 60.0
API_ERROR_RETRY_S = 30.0


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """kopf settings for this operator; called at startup."""
    # Progress and the last-handled spec go in our own annotations; status stays ours alone.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=PREFIX, key="last-handled-configuration")
    # The timer needs a finalizer (kopf stops it before the resource goes away).
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    # Ask the API server to end each watch after 5 minutes, and give up on our side shortly after,
    # so a watch that went silent (a dropped connection, a proxy) is noticed and restarted.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    # Events: the reconciler's phase changes, posted explicitly; log lines stay logs.
    settings.posting.enabled = True
    settings.posting.loggers = False
    settings.posting.level = logging.INFO


def connection_info(configuration: k8s.Configuration) -> kopf.ConnectionInfo:
    """kopf's credentials from the client's configuration (as kopf's own `login_via_client` reads it)."""
    header = configuration.get_api_key_with_prefix("BearerToken") or configuration.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0] if parts else None)
    return kopf.ConnectionInfo(
        server=str(configuration.host),
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


def _reconcile(
    config: Settings, kube: KubeClient, name: str | None, namespace: str | None, body: kopf.Body, patch: kopf.Patch
) -> None:
    assert name is not None and namespace is not None, "OptimizedModel is namespaced"
    try:
        outcome = reconcile(name, namespace, copy.deepcopy(dict(body)), config, kube=kube)
    except TransientError as e:
        raise kopf.TemporaryError(str(e), delay=e.delay_s) from e
    except AdoptionError as e:
        raise kopf.TemporaryError(str(e), delay=ADOPTION_RETRY_S) from e
    except KubeError as e:
        raise kopf.TemporaryError(str(e), delay=API_ERROR_RETRY_S) from e
    patch.status.update(outcome.status)
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)


def build_registry(config: Settings, kube: KubeClient) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_kopf(settings)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(kube.configuration)

    @kopf.on.create(API_GROUP, API_VERSION, PLURAL, id="reconcile", registry=registry)
    @kopf.on.update(API_GROUP, API_VERSION, PLURAL, id="reconcile", registry=registry)
    @kopf.on.resume(API_GROUP, API_VERSION, PLURAL, id="reconcile", registry=registry)
    def on_change(name: str | None, namespace: str | None, body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        _reconcile(config, kube, name, namespace, body, patch)

    interval = config.resync_seconds

    @kopf.timer(API_GROUP, API_VERSION, PLURAL, id="resync", interval=interval, initial_delay=interval, registry=registry)
    def on_timer(name: str | None, namespace: str | None, body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        _reconcile(config, kube, name, namespace, body, patch)

    return registry
