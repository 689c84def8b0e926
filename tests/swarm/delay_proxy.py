"""A TCP proxy that adds a one-way delay in each direction, for the cluster benchmark.

Usage: delay_proxy.py LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT DELAY_MS

Each chunk read from one side is written to the other DELAY_MS later, in order:
the link gets latency, not a bandwidth limit (the machine's kernel has no netem).
"""

import asyncio
import sys


async def pipe(reader, writer, delay):
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def send():
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        writer.close()

    sender = asyncio.ensure_future(send())
    try:
        while True:
            data = await reader.read(65536)
            await queue.put((loop.time() + delay, data))
            if not data:
                break
    except ConnectionError:
        await queue.put((loop.time(), b""))
    await sender


async def main():
    listen_host, listen_port, target_host, target_port, delay_ms = sys.argv[1:6]
    delay = float(delay_ms) / 1000

    async def handle(client_reader, client_writer):
        try:
            target_reader, target_writer = await asyncio.open_connection(target_host, int(target_port))
        except OSError:
            client_writer.close()
            return
        try:
            await asyncio.gather(
                pipe(client_reader, target_writer, delay), pipe(target_reader, client_writer, delay)
            )
        except ConnectionError:
            pass

    server = await asyncio.start_server(handle, listen_host, int(listen_port))
    async with server:
        await server.serve_forever()


asyncio.run(main())
