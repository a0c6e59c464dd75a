"""What a run has acquired, released in reverse order whatever happens."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Callable, ContextManager, TypeVar

T = TypeVar("T")
log = logging.getLogger("aideploy")


class Resources:
    """A stack of release callbacks with descriptions.

    Unlike :class:`contextlib.ExitStack`, a failing release is logged and the others still
    run: teardown must not stop halfway because one process was already gone.
    """

    def __init__(self) -> None:
        self._stack: list[tuple[str, Callable[[], object]]] = []

    def __len__(self) -> int:
        return len(self._stack)

    def add(self, description: str, release: Callable[[], object]) -> None:
        """Register ``release`` to run at teardown; ``description`` names it in the log."""
        self._stack.append((description, release))

    def enter(self, description: str, cm: ContextManager[T]) -> T:
        """Enter ``cm`` now and exit it at teardown."""
        value = cm.__enter__()
        self.add(description, lambda: cm.__exit__(None, None, None))
        return value

    def tempdir(self, prefix: str) -> Path:
        """A fresh temp dir that is deleted at teardown."""
        path = Path(tempfile.mkdtemp(prefix=f"aideploy-{prefix}-"))
        self.add(f"temp dir {path}", lambda: shutil.rmtree(path, ignore_errors=True))
        return path

    def release_all(self) -> list[tuple[str, BaseException]]:
        """Release everything, newest first. Returns the (description, error) of failures."""
        failures = []
        while self._stack:
            description, release = self._stack.pop()
            try:
                release()
                log.debug("released %s", description)
            except Exception as exc:  # keep going: the rest must still be released
                log.warning("could not release %s: %s", description, exc)
                failures.append((description, exc))
        return failures
