"""`TrafficRouter` on the local nginx (local mode's router): upstream weights, read back from what the workers serve."""

from __future__ import annotations

from optiserve.local.nginx import NginxConfigError, NginxReloadError, NginxServer
from optiserve.providers.traffic import PermanentTrafficError, TransientTrafficError, check_weight


class NginxRouter:
    """Splits with nginx's weighted upstream; every weight 0..100 is exact."""

    def __init__(self, server: NginxServer, reload_timeout_s: float = 10.0) -> None:
        self.server = server
        self.reload_timeout_s = reload_timeout_s

    def set_weight(self, candidate_weight: int) -> None:
        check_weight(candidate_weight)
        try:
            self.server.set_candidate_weight(candidate_weight, timeout_s=self.reload_timeout_s)
        except NginxConfigError as e:
            raise PermanentTrafficError(f"spec.rollout.traffic (nginx): {e}") from e
        except NginxReloadError as e:
            raise TransientTrafficError(f"nginx did not apply candidate weight {candidate_weight}: {e}") from e

    def current_weight(self) -> int | None:
        served = self.server.served_split()
        return None if served is None else served.candidate

    def achievable_weight(self, candidate_weight: int) -> int:
        return check_weight(candidate_weight)
