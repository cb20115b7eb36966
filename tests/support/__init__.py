"""What several test tiers share: test doubles and helpers, never tests.

- `eventually`: the one bounded poll; it fails at its deadline with what it waited for.
- `operator_runner.running_operator`: the operator in-process (kopf's `KopfRunner`).
- `kube_emulator` (the emulated Kubernetes API) and `fault_emulator` (the same server with faults
  injected and every call logged); `emulated_cluster`: the MiniLM model's life on it, the test
  playing the cluster; `canary_fakes`: the metrics and router the canary judges and moves.
- `control_plane` (a real etcd + kube-apiserver + controller manager), `kubelet_role` (the test
  playing the kubelet), `model_on_apiserver` (the model on that real server).
- `helm` and `chart_workloads`: the chart rendered, and what the operator runs with its settings.
- `models`: tiny real ONNX models, datasets and manifests built in code; `job_results`: what the
  tests' optimization Jobs report.
- Test doubles: `fake_router.FakeRouter`, `memory_lease.MemoryLease`.
"""
