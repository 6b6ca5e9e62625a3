"""Observe a CoAP resource with aiocoap (the library: aiocoap-client 0.4.17 cancels its own
observation as soon as the first response arrives) and print every representation as one
line of hex, the first one included. Exits after COUNT lines or TIMEOUT seconds.

    python3 aiocoap_observe.py URI COUNT TIMEOUT
"""

import asyncio
import sys

import aiocoap


async def main(uri: str, count: int, timeout: float) -> int:
    ctx = await aiocoap.Context.create_client_context()
    req = ctx.request(aiocoap.Message(code=aiocoap.GET, uri=uri, observe=0))
    first = await req.response
    print(first.payload.hex(), flush=True)
    seen = 1

    async def rest() -> None:
        nonlocal seen
        async for note in req.observation:
            print(note.payload.hex(), flush=True)
            seen += 1
            if seen >= count:
                return

    try:
        await asyncio.wait_for(rest(), timeout)
    except asyncio.TimeoutError:
        pass
    req.observation.cancel()
    await ctx.shutdown()
    return 0 if seen >= count else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))))
