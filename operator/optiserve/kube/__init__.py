"""The only code that talks to the Kubernetes API (see `client.py`)."""

from optiserve.errors import TransientError
from optiserve.kube.client import AdoptionError, ApiError, BaselineState, CandidateState, KubeClient, KubeError

__all__ = ["AdoptionError", "ApiError", "BaselineState", "CandidateState", "KubeClient", "KubeError", "TransientError"]
