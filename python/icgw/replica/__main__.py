"""`python -m icgw.replica`: run the emulator until SIGTERM or SIGINT.

When it listens, it prints exactly one line of JSON on stdout (everything else goes to stderr):

    {"event": "ready", "url": "http://127.0.0.1:4943", "root_key": "<hex DER>", "canisters": ["<id>", ...]}
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

import orjson
import uvloop

from icgw import core
from icgw.replica import Replica
from icgw.replica.config import ReplicaConfig, config_from_args

log = logging.getLogger("icgw.replica")


def ready_line(replica: Replica) -> bytes:
    return orjson.dumps(
        {
            "event": "ready",
            "url": replica.url,
            "root_key": replica.root_key_der.hex(),
            "canisters": [core.principal_to_text(cid) for cid in replica.canister_ids],
        }
    )


async def serve(config: ReplicaConfig) -> int:
    replica = Replica(config)
    try:
        await replica.start()
    except (OSError, ValueError) as e:
        log.error("cannot start the replica: %s", e)
        await replica.stop()
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sys.stdout.buffer.write(ready_line(replica) + b"\n")
    sys.stdout.flush()
    await stop.wait()
    log.info("stopping")
    await replica.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    config, log_level = config_from_args(argv)
    logging.basicConfig(
        level=log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return uvloop.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
