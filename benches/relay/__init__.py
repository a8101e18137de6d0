"""The relay benchmark harness: `python -m benches.relay --help`.

Every performance claim of icgw as a number anyone can reproduce with one command, side by side with the
physical limit of the machine (the same traffic through a bare picows relay) and with any other gateway
that takes the reference gateway's flags (`--gateway-cmd`), in the same run. See BENCHMARKS.md.

Modules: `cli` (the command), `scenarios` (what each scenario does and measures), `stack` (replica, gateway
and generators of one scenario), `loadgen` (the load generator process), `bare_relay` (the physical
limit), `canister` (the emulated canister's app), `control` (harness <-> generator channel), `procs`
(processes and /proc readings), `report` (goals, table), `machine`, `settings`, `stats`.
"""
