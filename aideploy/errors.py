"""One error family for everything a user can get wrong or the world can do to a run.

Every :class:`AideployError` carries a one-line cause and a hint saying what to do next.
The command line prints exactly those two lines and exits non-zero; no traceback is shown
for these errors.
"""

from __future__ import annotations


class AideployError(Exception):
    """Base of aideploy's errors: ``str(err)`` is the cause, ``err.hint`` the next step."""

    exit_code = 2

    def __init__(self, cause: str, hint: str = "") -> None:
        super().__init__(cause)
        self.cause = cause
        self.hint = hint

    def __str__(self) -> str:
        return self.cause

    def report(self) -> str:
        """What the command line shows: ``error: <cause>`` and, if there is one, ``hint: <hint>``."""
        return f"error: {self.cause}" + (f"\nhint: {self.hint}" if self.hint else "")


class ConfigError(AideployError):
    """The composed configuration is inconsistent (beyond what the schema can check)."""


class PluginError(AideployError):
    """A plugin is missing, failed to load, or breaks the hook contract."""


class StageError(AideployError):
    """A stage failed for a reason outside the user's config (server, network, store)."""

    exit_code = 1


class EnvironmentMismatch(AideployError):
    """The running interpreter does not satisfy the scoring environment's spec."""


class DeployError(StageError):
    """The service could not be deployed or did not become healthy."""


class PredictError(StageError):
    """The service answered a scoring request with an error, or not at all.

    ``answered`` holds the answers to the requests before the failed one, in order (an unbroken
    run from the first request of the call), so that what was answered is not lost.
    """

    def __init__(self, cause: str, hint: str = "") -> None:
        super().__init__(cause, hint)
        self.answered: list = []


class Interrupted(BaseException):
    """Raised in the main thread on SIGTERM so a run tears down as it does on Ctrl-C."""
