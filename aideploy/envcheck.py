"""Does this interpreter satisfy a scoring environment's spec?"""

from __future__ import annotations

import importlib.metadata
import platform

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import Version


def unmet(python: str, requirements: list[str]) -> list[str]:
    """What this interpreter lacks of ``python`` (e.g. "3.11") and the pip ``requirements``.

    Returns one human-readable line per problem; empty when everything is satisfied.
    """
    problems = []
    here = Version(platform.python_version())
    wanted = Version(python)
    if (here.major, here.minor) != (wanted.major, wanted.minor)[: len(wanted.release)]:
        problems.append(f"python {python} (this interpreter is {here})")
    for line in requirements:
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            problems.append(f"{line!r} is not a valid requirement: {exc}")
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{req} (not installed)")
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            problems.append(f"{req} (installed: {installed})")
    return problems
