"""The publisher thread's event loop: ``asyncio.run`` without a thread pool for blocking calls.

asyncio resolves host names (``getaddrinfo``) in the loop's default executor, a thread pool that
``concurrent.futures`` closes when the interpreter starts exiting, before ``atexit`` handlers run. The
SDK's exit flush is an ``atexit`` handler, and it may be the first moment the publisher connects (a
short script, a broker that was down): with a host name such as ``localhost`` every attempt then failed
(``can't register atexit after shutdown`` / ``cannot schedule new futures after interpreter shutdown``)
and the script's events were lost. The loop here runs those calls inline instead: it serves only the
publisher's producer, so a name lookup holding it up for a moment holds up nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

_log = logging.getLogger("tracehouse")


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main()`` to completion on a new event loop in this thread, then cancel what it left running
    and close the loop (as ``asyncio.run`` does, but without starting a thread to shut an executor down)."""
    import asyncio

    loop = asyncio.new_event_loop()
    executor = _inline_executor()
    if executor is not None:
        loop.set_default_executor(executor)
    try:
        loop.run_until_complete(main())
    finally:
        try:
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            if left:
                loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


def _inline_executor() -> Any:
    """A ``ThreadPoolExecutor`` (the only kind asyncio accepts as default) that runs each call at once in
    the calling thread, or ``None`` when it cannot be built (its module imported during interpreter exit:
    numeric broker addresses still work then)."""
    try:
        from concurrent.futures import Future, ThreadPoolExecutor
    except Exception:
        _log.debug("tracehouse: no inline executor; host names resolve in asyncio's thread pool", exc_info=True)
        return None

    class InlineExecutor(ThreadPoolExecutor):
        def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
            future: Future[Any] = Future()
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)
            return future

        def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
            return None

    return InlineExecutor(max_workers=1)
