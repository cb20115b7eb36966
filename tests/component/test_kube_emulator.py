"""The test emulator's own behaviour: label selectors, and the key lookups that replace kmock's scans."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest

from optiserve.kube.client import SERVICES, KubeClient
from tests.support.kube_emulator import KubeEmulator, resource_info, selector_matches, serve_emulator

LABELS = {"app": "triton", "optiserve.io/variant": "candidate"}


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ("app=triton", True),
        ("app==triton", True),
        ("app=other", False),
        ("app!=other", True),
        ("missing!=x", True),
        ("app", True),
        ("!app", False),
        ("!missing", True),
        ("optiserve.io/variant in (baseline,candidate)", True),
        ("optiserve.io/variant notin (baseline,candidate)", False),
        ("app=triton,optiserve.io/variant in (baseline)", False),
        ("", True),
    ],
)
def test_label_selectors(selector: str, matches: bool) -> None:
    assert selector_matches(selector, LABELS) is matches


def test_a_malformed_selector_is_an_error() -> None:
    with pytest.raises(ValueError, match="unparsable"):
        selector_matches("a in (x", LABELS)


@pytest.fixture
def kube() -> Iterator[KubeClient]:
    with serve_emulator({"v1/services": resource_info("Service")}, functools.partial(KubeEmulator, request_history=1)) as running:
        client = KubeClient.for_host(running.url)
        yield client
        client.close()


def service(name: str, namespace: str, variant: str) -> dict[str, object]:
    meta = {"name": name, "namespace": namespace, "labels": {"optiserve.io/variant": variant}}
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta}


def test_get_list_patch_and_delete_find_objects_by_namespace_and_name(kube: KubeClient) -> None:
    kube.create(SERVICES, "a", service("s", "a", "candidate"))
    kube.create(SERVICES, "b", service("s", "b", "baseline"))
    kube.create(SERVICES, "b", service("t", "b", "candidate"))

    found = kube.get(SERVICES, "b", "s")
    assert found is not None and found["metadata"]["labels"]["optiserve.io/variant"] == "baseline"
    assert kube.get(SERVICES, "a", "t") is None
    assert sorted(o["metadata"]["name"] for o in kube.select(SERVICES, "b", "")) == ["s", "t"]
    assert [o["metadata"]["namespace"] for o in kube.select(SERVICES, "a", "")] == ["a"]
    assert [o["metadata"]["name"] for o in kube.select(SERVICES, "b", "optiserve.io/variant=candidate")] == ["t"]

    patched = kube.patch(SERVICES, "b", "t", {"metadata": {"labels": {"patched": "yes"}}})
    assert patched["metadata"]["labels"]["patched"] == "yes" and patched["metadata"]["namespace"] == "b"
    assert kube.delete(SERVICES, "b", "s") is True
    assert kube.delete(SERVICES, "b", "s") is False
    assert kube.get(SERVICES, "a", "s") is not None, "a same-named object elsewhere is untouched"
    assert [o["metadata"]["name"] for o in kube.select(SERVICES, "b", "")] == ["t"]
