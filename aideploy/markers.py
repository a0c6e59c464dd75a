"""Markers for aideploy's hook specifications and hook implementations.

Plugin authors import :data:`hookimpl` (re-exported as ``aideploy.hookimpl``) and
decorate functions named after the hooks in :mod:`aideploy.hookspecs`.
"""

import pluggy

PROJECT_NAME = "aideploy"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
