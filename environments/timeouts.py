"""Running a call with a wall-clock limit, for retrievers and tools that may hang."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def call_with_timeout(fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
    """Call `fn(*args)`; raise `TimeoutError` if it has not returned after `timeout` seconds (None: no limit).

    The call runs on a daemon thread, so a hung call is abandoned rather than killed: the environment moves
    on and the thread ends with the process. Exceptions from `fn` propagate unchanged.
    """
    if timeout is None:
        return fn(*args)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn(*args)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True, name="agentrl-call")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
