"""A TCP relay in front of the store that counts the bytes clients send through it (case b).

Run as ``python bench/relay.py HOST PORT``: it listens on a free port of 127.0.0.1, prints
its URL, forwards every connection to HOST:PORT byte for byte, and counts what the clients
send, in 0.1 s bins of CLOCK_MONOTONIC (the same clock as the harness's). When the harness
closes its stdin it prints the bins as JSON and exits. A process of its own: in the
harness's it would share one GIL with the samplers.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

BIN_S = 0.1
READ = 256 * 1024


class Counter:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.bins: dict[int, int] = {}

    def add(self, n: int) -> None:
        index = int((time.monotonic() - self.t0) / BIN_S)
        self.bins[index] = self.bins.get(index, 0) + n


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counter: Counter | None
) -> None:
    try:
        while data := await reader.read(READ):
            if counter is not None:
                counter.add(len(data))
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def main(host: str, port: int) -> None:
    counter = Counter()

    async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(host, port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_pipe(client_r, up_w, counter), _pipe(up_r, client_w, None))

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    print(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    server.close()
    print(json.dumps({"t0": counter.t0, "bin_s": BIN_S, "bins": counter.bins}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
