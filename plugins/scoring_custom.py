"""``scoring=custom``: the user's own scoring script, served as Azure ML serves it.

``scoring.source_dir`` is copied as the service's code and ``scoring.entry_script`` in it is
the entry script (``init()`` loads the model from ``AZUREML_MODEL_DIR``; ``run(raw_data)``
answers one request): the same directory the Azure targets upload. Requests are aideploy's
plain body, ``{"data": [[...], ...]}``; the evaluation reads ``predictions`` from a JSON
object or a bare list, and says so when the answers hold neither.
"""

from pathlib import Path, PurePosixPath

from aideploy import hookimpl, service_env
from aideploy.artifacts import ScoringCode
from aideploy.errors import ConfigError
from aideploy.staging import copy_source

PLUGIN_NAME = "custom_scoring"


@hookimpl
def aideploy_stage_scoring(cfg, ctx):
    if ctx.cfg.encryption.plugin != "plain":
        raise ConfigError(f"scoring=custom serves plain requests; encryption={ctx.choices.get('encryption')} "
                          "needs aideploy's score.py",
                          hint="use encryption=none with your script, or scoring=builtin to serve encrypted")
    source = Path(cfg.source_dir).expanduser()
    if not source.is_dir():
        raise ConfigError(f"scoring.source_dir is not a directory: {source}",
                          hint="give the directory holding your score.py, e.g. scoring.source_dir=./src")
    entry = PurePosixPath(cfg.entry_script)
    if entry.is_absolute() or ".." in entry.parts or not (source / entry).is_file():
        raise ConfigError(f"scoring.entry_script {cfg.entry_script!r} is not a file inside {source}",
                          hint="give the script's path relative to scoring.source_dir, e.g. scoring.entry_script=score.py")
    staged = ctx.output_dir / "deploy" / "source"
    copy_source(source, staged)
    return ScoringCode(staged, str(entry), builtin=False, settings=service_env.from_config(ctx.cfg))
