"""core.remote.hostpool: each host's work in a bounded pool; a failure or a bug stays with its host, in the hosts'
order."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest

from topdeck.core.errors import Cancelled, InternalError, SSHError
from topdeck.core.remote.hostpool import each_host, values


@dataclass(frozen=True)
class Host:
    name: str


def test_no_hosts_is_no_results_and_no_pool() -> None:
    assert each_host([], lambda host: pytest.fail("ran"), parallel=4) == ()
    assert values(()) == ()


def test_a_bug_on_one_host_fails_that_host_named_and_the_others_go_on() -> None:
    def work(host: Host) -> str:
        if host.name == "db-1":
            raise ZeroDivisionError("division by zero")
        return host.name.upper()

    results = each_host([Host("web-1"), Host("db-1"), Host("web-2")], work, parallel=8)
    assert results[0] == "WEB-1" and results[2] == "WEB-2"
    assert isinstance(results[1], InternalError)
    assert str(results[1]).startswith("db-1: internal error in topdeck (ZeroDivisionError at test_hostpool.py:")
    # a host given by its name is named too
    assert str(each_host(["mail"], lambda name: 1 // 0, parallel=1)[0]).startswith("mail: internal error")


def test_values_raise_the_first_hosts_error_in_the_hosts_order() -> None:
    assert values(("a", "b")) == ("a", "b")
    first, second = SSHError("web-1: refused"), SSHError("web-2: refused")
    with pytest.raises(SSHError) as caught:
        values(("ok", first, second))
    assert caught.value is first


def test_a_cancel_during_the_run_stops_the_hosts_not_yet_begun() -> None:
    cancel = threading.Event()
    begun: list[int] = []

    def work(n: int) -> int:
        begun.append(n)
        cancel.set()  # the first host cancels the run
        return n

    results = each_host([1, 2, 3, 4], work, parallel=1, cancel=cancel, cancelled="stopped by the operator")
    assert begun == [1] and results[0] == 1
    assert all(isinstance(r, Cancelled) and str(r) == "stopped by the operator" for r in results[1:])


def test_on_done_is_called_one_at_a_time_with_the_count_so_far() -> None:
    inside = threading.Lock()
    counts: list[int] = []

    def on_done(host: int, count: int) -> None:
        assert inside.acquire(blocking=False), "on_done called while another call runs"
        counts.append(count)
        inside.release()

    each_host(list(range(20)), lambda n: n, parallel=6, on_done=on_done)
    assert sorted(counts) == list(range(1, 21))


def test_the_pool_threads_carry_the_name_given() -> None:
    names = each_host([1, 2], lambda n: threading.current_thread().name, parallel=2, thread_name="topdeck-probe")
    assert all(str(name).startswith("topdeck-probe") for name in names)
