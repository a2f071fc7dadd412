"""One bounded pool for work done on each host at once (probe, status, generations, a deploy's wave)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from topdeck.core.errors import Cancelled, TopdeckError, internal_error

H = TypeVar("H")
R = TypeVar("R")


def each_host(hosts: Sequence[H], work: Callable[[H], R], *, parallel: int, cancel: threading.Event | None = None,
              cancelled: str = "cancelled", on_done: Callable[[H, int], None] | None = None,
              thread_name: str = "topdeck-host") -> tuple[R | TopdeckError, ...]:
    """`work(host)` for every host, at most `parallel` at a time; the results in the hosts' order.

    A host whose work raises a TopdeckError has that error as its result, any other exception an InternalError
    naming it; one not begun when `cancel` is set has Cancelled(`cancelled`). `on_done(host, hosts done so far)` is
    called after each host, one call at a time."""
    lock = threading.Lock()
    done = 0

    def one(host: H) -> R | TopdeckError:
        nonlocal done
        result: R | TopdeckError
        if cancel is not None and cancel.is_set():
            return Cancelled(cancelled)
        try:
            result = work(host)
        except TopdeckError as error:
            result = error
        except Exception as error:  # noqa: BLE001 - a bug met on one host fails that host, named as one
            result = internal_error(host if isinstance(host, str) else getattr(host, "name", "a host"), error)
        with lock:
            done += 1
            if on_done is not None:
                on_done(host, done)
        return result

    if not hosts:
        return ()
    with ThreadPoolExecutor(max(1, min(parallel, len(hosts))), thread_name_prefix=thread_name) as pool:
        return tuple(pool.map(one, hosts))


def values(results: Sequence[R | TopdeckError]) -> tuple[R, ...]:
    """The results, or the first host's error (in the hosts' order) raised."""
    for result in results:
        if isinstance(result, TopdeckError):
            raise result
    return tuple(result for result in results if not isinstance(result, TopdeckError))
