"""ObjectRef as a ``concurrent.futures.Future`` and as an asyncio awaitable."""

from __future__ import annotations

import asyncio
import concurrent.futures

from rtd import _core


def future_for(ref) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()

    def done():
        from rtd import api

        try:
            future.set_result(api.get(ref))
        except BaseException as e:  # noqa: BLE001 - the future carries any error
            future.set_exception(e)

    _core.on_ready(ref, done)
    return future


def await_ref(ref):
    return asyncio.wrap_future(future_for(ref))
