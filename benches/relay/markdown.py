"""A run's results as Markdown tables, for BENCHMARKS.md: `python -m benches.relay.markdown run.json`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

from benches.relay.report import fmt

Results = dict[str, Any]


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _p(summary: dict[str, Any]) -> str:
    return f"{fmt(summary['p50_ms'])} / {fmt(summary['p90_ms'])} / {fmt(summary['p99_ms'])}"


def scenario_rows(scenarios: Results) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for name, r in scenarios.items():
        if "error" in r:
            rows.append((name, "error", r["error"].splitlines()[0], ""))
            continue
        fraction = r.get("fraction_of_limit")
        of_limit = f" ({fmt(fraction, 2)} of limit)" if fraction is not None else ""
        if name == "downstream":
            rows += [
                (name, f"{r['clients']:,} clients x {r['messages_per_client']:,} messages", "", ""),
                ("", "delivered msg/s", f"{fmt(r['rate_msg_s'])}{of_limit}", f"{r['missing']:,} missing"),
                ("", "gateway CPU per message", f"{fmt(r['gateway_cpu_us_per_msg'])} µs", ""),
                (
                    "",
                    "replica / generator CPU per message",
                    f"{fmt(r['replica_cpu_us_per_msg'])} / {fmt(r['generators_cpu_us_per_msg'])} µs",
                    "",
                ),
                ("", "latency p50 / p90 / p99", f"{_p(r['latency'])} ms", "canister queue -> client"),
                (
                    "",
                    "frame size, throughput",
                    f"{fmt(r['mean_frame_bytes'], 0)} B, {fmt(r['throughput_mib_s'])} MiB/s",
                    "",
                ),
            ]
        elif name == "upstream":
            rows += [
                (name, f"{r['clients']:,} clients x {r['messages_per_client']:,} messages", "", ""),
                ("", "relayed envelopes/s", f"{fmt(r['rate_msg_s'])}{of_limit}", r["wait_ended"]),
                ("", "gateway CPU per envelope", f"{fmt(r['gateway_cpu_us_per_msg'])} µs", ""),
                (
                    "",
                    "replica / generator CPU per envelope",
                    f"{fmt(r['replica_cpu_us_per_msg'])} / {fmt(r['generators_cpu_us_per_msg'])} µs",
                    "",
                ),
                ("", "missing, out of order", f"{r['missing']:,}, {r['out_of_order']:,}", ""),
            ]
        elif name == "pingpong":
            rows += [
                (name, f"{r['clients']:,} clients x {r['rounds']} rounds", "", ""),
                ("", "round trip p50 / p90 / p99", f"{_p(r['round_trip'])} ms", ""),
                (
                    "",
                    "open p50 / p90 / p99",
                    f"{_p(r['open']['latency'])} ms",
                    "connect -> OpenMessage + ping",
                ),
                (
                    "",
                    "receive latency p50 / p90 / p99",
                    f"{_p(r['receive_latency'])} ms",
                    "canister -> client",
                ),
                ("", "gateway CPU per round trip", f"{fmt(r['gateway_cpu_us_per_msg'])} µs", ""),
            ]
        elif name == "idle":
            rows += [
                (
                    name,
                    f"{r['connections']:,} connections held {fmt(r['hold_s'])} s",
                    "",
                    f"{r['failed']:,} failed",
                ),
                (
                    "",
                    "gateway RSS per connection",
                    f"{fmt(r['rss_kib_per_connection'], 2)} KiB",
                    f"bare relay {fmt(r.get('bare_relay_rss_kib_per_connection'), 2)} KiB",
                ),
                ("", "gateway CPU while idle", f"{fmt(r['gateway_idle_cpu_percent'])} %", ""),
            ]
        elif name == "open-rate":
            rows += [
                (
                    name,
                    f"{r['connections']:,} connections, {r['window']} in flight",
                    "",
                    f"{r['failed']:,} failed",
                ),
                ("", "connections/s", f"{fmt(r['rate_per_s'])}{of_limit}", "handshake -> OpenMessage"),
                ("", "open p50 / p90 / p99", f"{_p(r['latency'])} ms", ""),
                ("", "gateway CPU per open", f"{fmt(r['gateway_cpu_us_per_open'])} µs", ""),
            ]
        elif name == "limit":
            d, u, c = r["downstream"], r["upstream"], r["connect"]
            rows += [
                (name, "bare picows relay, same traffic", "", ""),
                (
                    "",
                    "downstream msg/s",
                    fmt(d["rate_msg_s"]),
                    f"{d['frame_bytes']:,} B frames, {fmt(d['relay_cpu_us_per_msg'])} µs CPU/msg",
                ),
                (
                    "",
                    "upstream msg/s",
                    fmt(u["rate_msg_s"]),
                    f"{u['frame_bytes']:,} B frames, {fmt(u['relay_cpu_us_per_msg'])} µs CPU/msg",
                ),
                ("", "WebSocket connections/s", fmt(c["rate_per_s"]), f"{c['window']} in flight"),
                (
                    "",
                    "RSS per idle connection",
                    f"{fmt(r['idle']['rss_kib_per_connection'], 2)} KiB",
                    f"{r['idle']['connections']:,} connections",
                ),
            ]
    return rows


def goal_rows(goals: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    rows = []
    for goal in goals:
        status = {True: "met", False: "**missed**", None: "n/a"}[goal["met"]]
        off = f" ({goal['off_by_factor']:.1f}x off)" if "off_by_factor" in goal else ""
        rows.append((goal["scenario"], goal["figure"], goal["goal"], fmt(goal["value"], 2), status + off))
    return rows


def render(results: Results) -> str:
    machine = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    lines = [
        f"Run {results['started']}, commit `{(machine['git_commit'] or '?')[:12]}`"
        f"{' (uncommitted changes)' if machine['git_dirty'] else ''}: "
        f"{machine['cpu_model']}, {machine['usable_cpus']} CPUs, {machine['memory_gib']} GiB, "
        f"{machine['os']}, Python {machine['python']}; {versions}.",
        "",
        f"Command: `{' '.join(results['command'])}`; gateway: `{' '.join(results['gateway_command'])}`.",
        "",
    ]
    lines += _table(("scenario", "figure", "value", "note"), scenario_rows(results["scenarios"]))
    if results.get("goals"):
        lines += ["", *_table(("scenario", "goal", "bound", "value", ""), goal_rows(results["goals"]))]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m benches.relay.markdown RUN.json", file=sys.stderr)
        return 2
    print(render(orjson.loads(Path(argv[1]).read_bytes())), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
