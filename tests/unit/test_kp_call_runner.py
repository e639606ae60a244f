"""CallRunner: where the hot routes' key service calls run (event loop or thread pool)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from kinko.api.kp_http import CallRunner
from kinko.errors import InvalidArgument, NotFound


class _Clock:
    """Returns the given instants in turn: call durations without any real waiting."""

    def __init__(self, *instants: float) -> None:
        self._instants: Iterator[float] = iter(instants)

    def __call__(self) -> float:
        return next(self._instants)


@pytest.mark.parametrize(
    ("durations", "inline_after_each"),
    [
        # Quick calls stay on the event loop.
        ([1e-4] * 5, [True] * 5),
        # One slow call (weight 1/2 here) moves calls to the pool...
        ([1e-4, 3e-3], [True, False]),
        # ...and they come back only once the average is below half the budget.
        ([3e-3, 1e-4, 1e-4], [False, False, True]),  # averages 1.5, 0.8, 0.45 ms
        # Exactly at the budget still counts as quick.
        ([2e-3], [True]),
    ],
)
def test_calls_move_off_the_loop_when_slow_and_back_when_quick(
    durations: list[float], inline_after_each: list[bool]
) -> None:
    runner = CallRunner(budget=1e-3, smoothing=0.5)
    seen = []
    for seconds in durations:
        runner.observe(seconds)
        seen.append(runner.inline)
    assert seen == inline_after_each


@pytest.mark.parametrize(
    ("budget", "smoothing"), [(0.0, 0.5), (-1.0, 0.5), (1e-3, 0.0), (1e-3, 1.5)]
)
def test_bad_settings_are_refused(budget: float, smoothing: float) -> None:
    with pytest.raises(InvalidArgument):
        CallRunner(budget=budget, smoothing=smoothing)


def _where(runner: CallRunner) -> tuple[str, str]:
    async def main() -> tuple[str, str]:
        loop_thread = threading.current_thread().name

        def call() -> str:
            return threading.current_thread().name

        return loop_thread, await runner.run(call)

    return asyncio.run(main())


def test_a_quick_call_runs_on_the_event_loop_and_a_slow_one_on_the_pool() -> None:
    # Each call reads the clock twice: 0 → 1 s is slow, 0 → 0 is quick.
    runner = CallRunner(budget=0.5, smoothing=1.0, clock=_Clock(0.0, 1.0, 0.0, 0.0, 0.0, 0.0))
    loop_thread, ran_on = _where(runner)
    assert ran_on == loop_thread  # it starts on the loop; this call took 1 s
    assert not runner.inline
    loop_thread, ran_on = _where(runner)
    assert ran_on != loop_thread  # on the pool; this one was quick
    assert runner.inline
    loop_thread, ran_on = _where(runner)
    assert ran_on == loop_thread


@pytest.mark.parametrize("slow_first", [False, True])
def test_a_call_raises_the_same_wherever_it_runs(slow_first: bool) -> None:
    runner = CallRunner(budget=0.5, smoothing=1.0, clock=_Clock(0.0, float(slow_first), 0.0, 0.0))

    def refuse(key: str, *, reason: str) -> str:
        raise NotFound(f"no key {key}", reason_code=reason)

    async def main() -> None:
        await runner.run(lambda: "warm-up")
        assert runner.inline is not slow_first
        await runner.run(refuse, "k1", reason="KEY_NOT_FOUND_ERR")

    with pytest.raises(NotFound) as info:
        asyncio.run(main())
    assert info.value.reason_code == "KEY_NOT_FOUND_ERR"
    assert str(info.value) == "no key k1"
