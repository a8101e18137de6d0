"""The unmodified ic-websocket-js 0.5.0 SDK against `python -m icgw` and `python -m icgw.replica`."""

from __future__ import annotations

from pathlib import Path

import pytest

from .processes import gateway, replica, run_node


def sdk(scenario: str, gateway_url: str, ic_url: str, canisters: list[str], **knobs: int) -> str:
    env = {
        "SCENARIO": scenario,
        "GATEWAY_URL": gateway_url,
        "IC_URL": ic_url,
        "CANISTER_IDS": ",".join(canisters),
        **{key.upper(): str(value) for key, value in knobs.items()},
    }
    result = run_node("gateway_sdk.test.mjs", env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout


@pytest.mark.parametrize("flavor", ["rust", "motoko"])
def test_reference_ping_pong(flavor: str, tmp_path: Path) -> None:
    with replica("--flavor", flavor) as ic, gateway(ic.url, tmp_path) as gw:
        sdk("pingpong", gw.url, ic.url, ic.canisters, clients=1, rounds=20)


def test_fifty_clients_over_three_canisters(tmp_path: Path) -> None:
    with replica("--canisters", "3") as ic, gateway(ic.url, tmp_path) as gw:
        sdk("pingpong", gw.url, ic.url, ic.canisters, clients=50, rounds=5)


def test_client_close_reaches_the_canister(tmp_path: Path) -> None:
    with replica() as ic, gateway(ic.url, tmp_path) as gw:
        sdk("client-close", gw.url, ic.url, ic.canisters)


def test_canister_close_gives_4001(tmp_path: Path) -> None:
    with replica() as ic, gateway(ic.url, tmp_path) as gw:
        sdk("canister-close", gw.url, ic.url, ic.canisters)


def test_gateway_restart_clients_reconnect(tmp_path: Path) -> None:
    """Clients of a stopped gateway are closed with 1001; new ones work through the restarted gateway,
    which keeps its principal (the key file)."""
    with replica() as ic:
        with gateway(ic.url, tmp_path) as first:
            sdk("pingpong", first.url, ic.url, ic.canisters, clients=2, rounds=3)
            port = first.port
            principal_line = next(line for line in first.output if "Gateway Agent principal" in line)
        with gateway(ic.url, tmp_path, port=port) as second:
            assert any(principal_line.split("principal:")[1].strip() in line for line in second.output)
            sdk("pingpong", second.url, ic.url, ic.canisters, clients=2, rounds=3)
