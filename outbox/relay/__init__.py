"""The relay: fans committed events out to deliveries, claims due ones, sends them signed, and
records every attempt's outcome, one module per job; `Relay` wires them into one process."""

from outbox.relay.attempts import Tally
from outbox.relay.relay import Options, Relay

__all__ = ["Options", "Relay", "Tally"]
