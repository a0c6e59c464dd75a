"""What a run has acquired, released in reverse order whatever happens."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager, TypeVar

if TYPE_CHECKING:
    from aideploy.journal import Journal

T = TypeVar("T")
log = logging.getLogger("aideploy")


def path_record(path: Path) -> dict[str, Any]:
    """The journal record of a file or directory the run must delete."""
    return {"kind": "path", "path": str(path)}


class Resources:
    """A stack of release callbacks with descriptions.

    Unlike :class:`contextlib.ExitStack`, a failing release is logged and the others still
    run: teardown must not stop halfway because one process was already gone.
    """

    def __init__(self, journal: "Journal | None" = None) -> None:
        self._stack: list[tuple[str, Callable[[], object]]] = []
        self.journal = journal

    def __len__(self) -> int:
        return len(self._stack)

    def add(self, description: str, release: Callable[[], object], record: dict[str, Any] | None = None) -> None:
        """Register ``release`` to run at teardown; ``description`` names it in the log.

        ``record`` says how to release it without this process (see
        :func:`aideploy.journal.release_entry`: ``{"kind": "process", "pid": ..., "started": ...}``,
        ``{"kind": "path", "path": ...}``, ...). It goes into the run journal at once, so that
        ``aideploy mode=gc`` can release it if this run is killed before its teardown.
        """
        if record is None or self.journal is None:
            self._stack.append((description, release))
            return
        key = self.journal.add({"what": description, **record})

        def release_and_forget() -> None:
            release()
            self.journal.remove(key)

        self._stack.append((description, release_and_forget))

    def enter(self, description: str, cm: ContextManager[T]) -> T:
        """Enter ``cm`` now and exit it at teardown."""
        value = cm.__enter__()
        self.add(description, lambda: cm.__exit__(None, None, None))
        return value

    def tempdir(self, prefix: str) -> Path:
        """A fresh temp dir that is deleted at teardown."""
        path = Path(tempfile.mkdtemp(prefix=f"aideploy-{prefix}-"))
        self.add(f"temp dir {path}", lambda: shutil.rmtree(path, ignore_errors=True), path_record(path))
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
