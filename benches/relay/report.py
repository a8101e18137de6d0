"""The run's results: fractions of the physical limit, the goals, the JSON file and the summary table."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

Results = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Goal:
    scenario: str
    path: tuple[str, ...]  # where the figure is in the scenario's results
    label: str
    bound: float
    at_least: bool  # True: the figure must be >= bound; False: <= bound
    unit: str

    def value(self, scenarios: Results) -> float | None:
        node: Any = scenarios.get(self.scenario)
        for key in self.path:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return float(node) if isinstance(node, int | float) and not math.isnan(node) else None

    def check(self, scenarios: Results) -> dict[str, Any]:
        value = self.value(scenarios)
        met = None if value is None else (value >= self.bound if self.at_least else value <= self.bound)
        entry: dict[str, Any] = {
            "scenario": self.scenario,
            "figure": self.label,
            "goal": f"{'>=' if self.at_least else '<='} {self.bound:g} {self.unit}".strip(),
            "value": value,
            "met": met,
        }
        if met is False and value is not None and self.bound:
            # How far off, as a factor of the goal: "missed by 2.4x".
            entry["off_by_factor"] = self.bound / value if self.at_least and value else value / self.bound
        return entry


# The goals of issue 5 for icgw on the 2-core benchmark machine.
GOALS = (
    Goal("downstream", ("fraction_of_limit",), "delivered msg/s as a fraction of limit", 0.5, True, ""),
    Goal("downstream", ("gateway_cpu_us_per_msg",), "gateway CPU per delivered message", 5, False, "us"),
    Goal("upstream", ("gateway_cpu_us_per_msg",), "gateway CPU per relayed envelope", 25, False, "us"),
    Goal("upstream", ("lost",), "envelopes lost", 0, False, ""),
    Goal("upstream", ("out_of_order",), "envelopes out of order", 0, False, ""),
    Goal("pingpong", ("round_trip", "p50_ms"), "round trip p50", 30, False, "ms"),
    Goal("pingpong", ("round_trip", "p99_ms"), "round trip p99", 120, False, "ms"),
    Goal("idle", ("rss_kib_per_connection",), "gateway RSS per idle connection", 8, False, "KiB"),
    Goal("open-rate", ("rate_per_s",), "connections opened per second", 2000, True, "/s"),
)


def add_fractions(scenarios: Results) -> None:
    """Each scenario's rate as a fraction of the same traffic through the bare relay (same run)."""
    limit = scenarios.get("limit")
    if not isinstance(limit, dict) or "error" in limit:
        return
    pairs = (
        ("downstream", "rate_msg_s", limit["downstream"]["rate_msg_s"]),
        ("upstream", "rate_msg_s", limit["upstream"]["rate_msg_s"]),
        ("open-rate", "rate_per_s", limit["connect"]["rate_per_s"]),
    )
    for name, key, ceiling in pairs:
        figures = scenarios.get(name)
        if isinstance(figures, dict) and key in figures and ceiling:
            figures["fraction_of_limit"] = figures[key] / ceiling
    idle = scenarios.get("idle")
    if isinstance(idle, dict) and "rss_kib_per_connection" in idle:
        # Memory: lower is better, so the bare relay's figure is given beside the gateway's.
        idle["bare_relay_rss_kib_per_connection"] = limit["idle"]["rss_kib_per_connection"]


def check_goals(scenarios: Results) -> list[dict[str, Any]]:
    return [goal.check(scenarios) for goal in GOALS if goal.scenario in scenarios]


def failures(scenarios: Results) -> list[str]:
    """Scenarios that did not run through, or whose traffic was not delivered whole and in order."""
    found = []
    for name, figures in scenarios.items():
        if "error" in figures:
            found.append(f"{name}: {figures['error'].splitlines()[0]}")
        elif figures.get("complete") is False:
            found.append(f"{name}: incomplete (lost, reordered or failed traffic; see the JSON)")
    return found


# --- the summary table ---------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _rows(name: str, r: Results) -> list[tuple[str, str]]:
    if "error" in r:
        return [("error", r["error"].splitlines()[0][:100])]
    fraction = fmt(r.get("fraction_of_limit"), 2)
    if name == "downstream":
        return [
            ("delivered msg/s", f"{fmt(r['rate_msg_s'])} ({fraction} of limit)"),
            ("gateway CPU us/msg", fmt(r["gateway_cpu_us_per_msg"])),
            (
                "replica / generators CPU us/msg",
                f"{fmt(r['replica_cpu_us_per_msg'])} / {fmt(r['generators_cpu_us_per_msg'])}",
            ),
            ("latency p50/p99 ms", f"{fmt(r['latency']['p50_ms'])} / {fmt(r['latency']['p99_ms'])}"),
            ("clients x msgs, missing", f"{r['clients']:,} x {r['messages_per_client']:,}, {r['missing']:,}"),
            ("frame bytes, MiB/s", f"{fmt(r['mean_frame_bytes'], 0)}, {fmt(r['throughput_mib_s'])}"),
        ]
    if name == "upstream":
        return [
            ("relayed envelopes/s", f"{fmt(r['rate_msg_s'])} ({fraction} of limit)"),
            ("gateway CPU us/envelope", fmt(r["gateway_cpu_us_per_msg"])),
            (
                "replica / generators CPU us/env",
                f"{fmt(r['replica_cpu_us_per_msg'])} / {fmt(r['generators_cpu_us_per_msg'])}",
            ),
            (
                "clients x msgs, missing, reordered",
                f"{r['clients']:,} x {r['messages_per_client']:,}, {r['missing']:,} ({r['wait_ended']}), "
                f"{r['out_of_order']:,}",
            ),
        ]
    if name == "pingpong":
        rt, op = r["round_trip"], r["open"]["latency"]
        return [
            (
                "round trip p50/p90/p99 ms",
                f"{fmt(rt['p50_ms'])} / {fmt(rt['p90_ms'])} / {fmt(rt['p99_ms'])}",
            ),
            ("open p50/p90/p99 ms", f"{fmt(op['p50_ms'])} / {fmt(op['p90_ms'])} / {fmt(op['p99_ms'])}"),
            (
                "receive latency p50/p99 ms",
                f"{fmt(r['receive_latency']['p50_ms'])} / {fmt(r['receive_latency']['p99_ms'])}",
            ),
            (
                "clients x rounds, failures",
                f"{r['clients']:,} x {r['rounds']}, {r['wrong_texts'] + r['incomplete_clients']}",
            ),
        ]
    if name == "idle":
        return [
            (
                "gateway RSS KiB/connection",
                f"{fmt(r['rss_kib_per_connection'], 2)} (bare relay "
                f"{fmt(r.get('bare_relay_rss_kib_per_connection'), 2)})",
            ),
            ("connections, failed", f"{r['connections']:,}, {r['failed']:,}"),
            ("gateway idle CPU %", fmt(r["gateway_idle_cpu_percent"])),
        ]
    if name == "open-rate":
        lat = r["latency"]
        return [
            ("connections/s", f"{fmt(r['rate_per_s'])} ({fraction} of limit)"),
            ("open p50/p99 ms", f"{fmt(lat['p50_ms'])} / {fmt(lat['p99_ms'])}"),
            ("gateway CPU us/open", fmt(r["gateway_cpu_us_per_open"])),
            ("connections, failed", f"{r['connections']:,}, {r['failed']:,}"),
        ]
    if name == "limit":
        d, u, c = r["downstream"], r["upstream"], r["connect"]
        return [
            ("downstream msg/s, relay us/msg", f"{fmt(d['rate_msg_s'])}, {fmt(d['relay_cpu_us_per_msg'])}"),
            ("upstream msg/s, relay us/msg", f"{fmt(u['rate_msg_s'])}, {fmt(u['relay_cpu_us_per_msg'])}"),
            ("WebSocket connections/s", fmt(c["rate_per_s"])),
            ("RSS KiB per idle connection", fmt(r["idle"]["rss_kib_per_connection"], 2)),
        ]
    return []


def summary_table(results: Results) -> str:
    lines = []
    machine = results["machine"]
    lines.append(
        f"machine: {machine['cpu_model']}, {machine['usable_cpus']} CPUs, Python {machine['python']}, "
        f"{machine['os']}"
    )
    lines.append(f"gateway: {' '.join(results['gateway_command'])}")
    lines.append("")
    width = 34
    lines.append(f"{'scenario':<11} {'figure':<{width}} value")
    lines.append(f"{'-' * 11} {'-' * width} {'-' * 30}")
    for name, figures in results["scenarios"].items():
        for i, (label, value) in enumerate(_rows(name, figures)):
            lines.append(f"{name if i == 0 else '':<11} {label:<{width}} {value}")
    goals = results.get("goals", [])
    if goals:
        lines.append("")
        lines.append("goals (issue 5, icgw on the 2-core machine):")
        for goal in goals:
            status = {True: "met", False: "MISSED", None: "n/a"}[goal["met"]]
            off = f" (off by {goal['off_by_factor']:.1f}x)" if "off_by_factor" in goal else ""
            lines.append(
                f"  {status:<6} {goal['scenario']:<10} {goal['figure']}: {fmt(goal['value'], 2)} "
                f"(goal {goal['goal']}){off}"
            )
    return "\n".join(lines)
