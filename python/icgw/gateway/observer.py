"""What the gateway reports about itself, as method calls; the Prometheus adapter implements them.

Keeping the hot paths on this small interface (instead of prometheus objects) lets tests observe the gateway
and lets the metrics backend change without touching the sessions or the pollers.
"""

from __future__ import annotations


class GatewayObserver:
    """Records nothing. Subclasses override what they measure."""

    def connection_opened(self) -> None:
        pass

    def connection_closed(self, reason: str) -> None:
        pass

    def delivered(self, nbytes: int) -> None:
        """One certified message was handed to a client socket."""

    def relayed(self, method: str, nbytes: int, seconds: float) -> None:
        """One client envelope was accepted by the IC, `seconds` after it arrived."""

    def relay_failed(self, reason: str) -> None:
        pass

    def slow_client_close(self) -> None:
        pass

    def poll(self, outcome: str, seconds: float) -> None:
        pass

    def certificate_failure(self) -> None:
        pass

    def nonce_gap(self) -> None:
        pass

    def active_pollers(self, count: int) -> None:
        pass

    def ws_close(self, outcome: str) -> None:
        pass
