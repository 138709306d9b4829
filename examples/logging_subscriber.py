"""Follow a training service's live stream from another process: python examples/logging_subscriber.py PORT"""

from __future__ import annotations

import argparse
import collections
import os

import trio

import asyncloop


async def main(host: str, port: int) -> None:
    counts: collections.Counter[str] = collections.Counter()
    token = os.environ.get("ASYNCLOOP_STREAM_TOKEN")
    async with asyncloop.subscribe(host, port, token) as records:
        async for record in records:
            counts[record["kind"]] += 1
            if record["kind"] == "dropped":
                print(f"(missed {record['count']} records: this subscriber was too slow)")
            elif record["kind"] == "value" and record["group"][0] == "Epoch":
                _, phase, _ = record["group"]
                print(f"{record['run']}: epoch {record['index']} {phase:<15} {record['name']} {record['value']:8.3f}")
            elif record["kind"] == "event" and record["name"] == "FitEnd":
                print(f"{record['run']}: done after {record['value']['epochs']} epochs")
    print(f"the service closed the stream; received {dict(counts)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port", type=int)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    trio.run(main, args.host, args.port)
