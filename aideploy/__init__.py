"""aideploy: deploy a trained model as a scoring web service and predict against it,
optionally with the client's input under homomorphic encryption.

Writing a plugin
----------------
A plugin is a module (or object) with functions named after the hooks in
:mod:`aideploy.hookspecs`, each decorated with ``@hookimpl``::

    from aideploy import hookimpl

    @hookimpl
    def aideploy_prepare_model(cfg, ctx, dataset):
        ...  # return an aideploy.artifacts.RegisteredModel

Make it known through the ``aideploy`` entry-point group in your package's pyproject.toml::

    [project.entry-points.aideploy]
    my_model = "my_pkg.my_plugin"

and choose it from config: a config option whose ``plugin`` field is ``my_model`` makes your
plugin serve that group's stages. The built-in plugins in ``aideploy_plugins`` are registered
the same way. See README.md, "Writing a plugin".
"""

from aideploy.errors import AideployError
from aideploy.markers import hookimpl, hookspec

__all__ = ["AideployError", "hookimpl", "hookspec", "__version__"]
__version__ = "0.1.0"
