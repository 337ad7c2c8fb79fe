"""Turn expected user errors into one red line and exit code 2 instead of a traceback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.console import Console

from agentrl.core.files import NoSpaceError
from agentrl.core.generator import BackendUnavailableError

err_console = Console(stderr=True)


@contextlib.contextmanager
def user_errors(*kinds: type[BaseException]) -> Iterator[None]:
    """Print `kinds` (plus FileExistsError, NoSpaceError and BackendUnavailableError; default: ValueError,
    KeyError, FileNotFoundError, RuntimeError) as `error: ...`."""
    defaults = (ValueError, KeyError, FileNotFoundError, RuntimeError)
    catch = (*(kinds or defaults), FileExistsError, NoSpaceError, BackendUnavailableError)
    try:
        yield
    except catch as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        err_console.print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
        raise typer.Exit(code=2) from None
