"""The asyncloop training service, embedded in your own trio program (what `asyncloop serve` runs).

    python examples/service/serve.py                 # http://127.0.0.1:8000/ shows the page
    python examples/service/serve.py --port 0        # a free port, printed
    python examples/service/client.py                # drive it from another terminal

One trio loop holds the HTTP server (hypercorn + quart-trio) and every job's `asyncloop.fit`; the torch work of
each fit runs in its own worker thread, so the server keeps answering while models train. Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import signal

import trio

from asyncloop.service import TrainingService, serve


async def main(args: argparse.Namespace) -> None:
    async with TrainingService(args.dir, max_running=args.max_running) as service:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve, service, args.host, args.port)
            print(f"asyncloop service on {url} (jobs under {args.dir}); Ctrl-C to stop", flush=True)
            # ... the rest of your service runs here, in the same loop as the server and the fits
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:  # Ctrl-C: stop serving; leaving TrainingService cancels the running jobs
                    break
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--dir", default="runs/service", help="folder for the jobs' event logs and checkpoints")
    parser.add_argument("--max-running", type=int, default=2, help="jobs that train at the same time")
    trio.run(main, parser.parse_args())
