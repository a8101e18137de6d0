"""The gateway: WebSocket sessions, the ordered relay to the IC, canister pollers and fan-out."""
