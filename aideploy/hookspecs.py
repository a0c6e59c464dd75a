"""Every hook aideploy calls, grouped by stage.

A run is a fixed sequence of stages (see :mod:`aideploy.stages`). Each *stage hook* is
served by exactly one plugin: the one named by the ``plugin`` field of the config group that
owns the stage (``target.plugin`` serves deploy and predict, ``encryption.plugin`` serves keys,
encrypt and decrypt, and so on). Stage hooks are ``firstresult``: the chosen plugin's return
value is the stage's result and is handed to later stages by argument name.

*Broadcast hooks* (requirements, check_model, evaluate, teardown) are called on every plugin that
implements them. *Observer hooks* (before/after/on-error) are called on every plugin around
every stage and must not change the run.

Arguments, by name (an implementation may take any subset of its spec's arguments):

- ``cfg``: the stage's own config group node (e.g. ``cfg.port`` for ``target=local``);
- ``ctx``: the :class:`aideploy.context.RunContext` (root config as ``ctx.cfg``, output dir,
  ``ctx.resources`` to register teardown, ``ctx.log``);
- ``dataset``, ``model``, ``code``, ``environment``, ``network``, ``endpoint``, ``keys``,
  ``requests``, ``responses``, ``scores``: earlier stages' results (see :mod:`aideploy.artifacts`).

Everything a stage acquires (a process, a port, a blob, a namespace, a temp dir) it must
register with ``ctx.resources`` so that teardown releases it in reverse order, on success,
failure, Ctrl-C and SIGTERM alike.
"""

from __future__ import annotations

from aideploy.markers import hookspec

# ----------------------------------------------------------------------------- registration


@hookspec
def aideploy_config_options():
    """Config options this plugin adds, so users can pick them like built-in ones.

    Called on every installed (entry-point) plugin once, before the config is composed.
    Return ``{group: {option: schema_dataclass}}`` or None, e.g.
    ``{"target": {"kubernetes": KubernetesTarget}}``; the schema's ``plugin`` field should
    default to this plugin's name. The option is then selectable as ``target=kubernetes``
    and typed like the built-ins. An option that is already taken (built in, or claimed by
    another plugin) is an error naming both. Modules named in the ``plugins`` config key are
    loaded after composition, so they cannot add options.
    """


@hookspec
def aideploy_scoring_requirements(ctx):
    """Pip requirements the scoring service needs, beyond the environment group's own.

    Called on every plugin while the environment stage builds the spec. Return a list of
    requirement strings (PEP 508) or None. The encryption plugins use it to add their runtime,
    e.g. ``encrypted-inference==0.9``.
    """


# ----------------------------------------------------------------------------- stage: data


@hookspec(firstresult=True)
def aideploy_prepare_data(cfg, ctx):
    """Load the samples to score; served by the ``data`` group's plugin.

    Runs first, so a bad path fails before anything is deployed. Return an
    :class:`~aideploy.artifacts.Dataset` whose ``X_test`` is float64 of shape
    (n_samples, n_features).
    """


# ----------------------------------------------------------------------------- stage: model


@hookspec(firstresult=True)
def aideploy_prepare_model(cfg, ctx, dataset):
    """Load or train the model and stage a version; served by the ``model`` group's plugin.

    Return a :class:`~aideploy.artifacts.RegisteredModel`, as :func:`aideploy.registry.register_model`
    makes it: loaded, its schema captured, staged in the registry. The runner checks the data's
    columns against the schema, calls :func:`aideploy_check_model`, and only then registers the
    version (:meth:`~aideploy.artifacts.RegisteredModel.commit`): a refused model leaves the
    registry as it was.
    """


@hookspec
def aideploy_check_model(ctx, model, dataset):
    """Refuse a model this run cannot serve, before anything is deployed; called on every plugin.

    Runs inside the model stage, right after the model is registered. Raise
    :class:`~aideploy.errors.ConfigError` naming what does not fit and what to do (the
    encryption plugins refuse models that are not one affine map, or whose outputs do not fit
    the scheme's range, and data outside the ranges its inputs are served with). Return value ignored. Check ``ctx.cfg`` to act only when your plugin is
    the one chosen for its group.
    """


# ----------------------------------------------------------------------------- stage: scoring


@hookspec(firstresult=True)
def aideploy_stage_scoring(cfg, ctx, model):
    """Lay out the service's code; served by the ``scoring`` group's plugin.

    Return a :class:`~aideploy.artifacts.ScoringCode`: a source directory (under
    ``ctx.output_dir``) and the entry script in it, exactly what every target serves or
    uploads (v1 ``InferenceConfig(source_directory=, entry_script=)``, v2
    ``CodeConfiguration(code=, scoring_script=)``).
    """


# ----------------------------------------------------------------------------- stage: environment


@hookspec(firstresult=True)
def aideploy_build_environment(cfg, ctx, requirements):
    """Write the scoring environment's spec; served by the ``environment`` group's plugin.

    ``requirements`` is the merged list from :func:`aideploy_scoring_requirements`, then what the
    registered model needs (:func:`aideploy.model_requirements.for_model`: the libraries it was
    pickled with, pinned; an MLflow model's requirements.txt). Return an
    :class:`~aideploy.artifacts.EnvironmentSpec`.
    """


# ----------------------------------------------------------------------------- stage: network


@hookspec(firstresult=True)
def aideploy_configure_network(cfg, ctx):
    """Create or describe the network the service lives in; served by the ``network`` plugin.

    Return a :class:`~aideploy.artifacts.NetworkInfo`. Anything created (namespaces, links)
    must be registered with ``ctx.resources``.
    """


# ----------------------------------------------------------------------------- stage: deploy


@hookspec(firstresult=True)
def aideploy_deploy(cfg, ctx, model, environment, network, code):
    """Deploy the scoring service and block until it is healthy; served by the ``target`` plugin.

    ``code`` is the :class:`~aideploy.artifacts.ScoringCode` to serve, ``model.path`` the
    registered version's directory (it goes under ``AZUREML_MODEL_DIR``).

    Return an :class:`~aideploy.artifacts.Endpoint`. Register the service's removal with
    ``ctx.resources`` unless it is meant to outlive the run (``mode=serve`` on a remote target).
    Raise :class:`~aideploy.errors.DeployError` with the service's log tail on failure.
    """


@hookspec(firstresult=True)
def aideploy_target_capabilities(cfg):
    """Say what this target is and can do; served by the ``target`` plugin, whenever another plugin asks.

    ``cfg`` is the target's config group. Return an :class:`aideploy.targets.TargetCapabilities`
    (whether the service runs on this machine, which cloud, online or batch, the encryption schemes and
    model kinds it serves, how its workers share the MLP round-token secret). Other plugins read it
    through :func:`aideploy.targets.capabilities` instead of testing the target's name; a target that
    does not implement this hook is taken as remote, in no cloud, serving plain requests only.
    """


@hookspec(firstresult=True)
def aideploy_plan(cfg, ctx, model, environment, code):
    """Describe what the deploy stage would create, creating nothing (``dry_run=true``).

    Served by the ``target`` plugin; needs no credentials and no network. Return a dict of
    JSON-serialisable data: ``{"target": ..., "actions": [{"action": "Model.register",
    "settings": {...}}, ...]}``, using the SDK objects' own serialised form where the SDK
    has one. The network settings are in ``ctx.cfg.network``.

    With ``mode=update`` (``ctx.mode``) describe the update of ``ctx.cfg.deployment_name``
    instead: every step :func:`aideploy_update` would take, and under ``"rollback"`` the steps it
    takes when the smoke test fails.
    """


@hookspec(firstresult=True)
def aideploy_update(cfg, ctx, name, model, environment, network, code, dataset):
    """Replace the model of the deployment ``name`` (``mode=update``); served by the ``target`` plugin.

    Runs instead of the deploy stage, after data, model, scoring, environment and network. Put
    the new version beside the old one, smoke-test it with ``ctx.cfg.update.smoke_samples``
    rows of ``dataset`` (:func:`aideploy.update.smoke_test`: every answer must agree with
    ``model`` in process), and only then move the traffic to it and remove the old one. On a
    failed smoke test the old version keeps serving and the new one is removed; raise
    :class:`~aideploy.errors.DeployError` saying so.

    Return the :class:`~aideploy.artifacts.Endpoint` now serving (``keep_alive=True`` if this
    process must stay up to serve it, as with ``mode=serve``). With ``dry_run=true`` this hook
    is not called: :func:`aideploy_plan` describes the update instead (``ctx.mode`` is
    ``Mode.update``).
    """


@hookspec(firstresult=True)
def aideploy_delete(cfg, ctx, name):
    """Delete the named deployment (``mode=delete``); served by the ``target`` plugin.

    Idempotent: deleting what does not exist is not an error. Return True if something was
    deleted, False if there was nothing by that name.
    """


# ----------------------------------------------------------------------------- stage: keystore


@hookspec(firstresult=True)
def aideploy_open_keystore(cfg, ctx, network):
    """Start or connect to the blob store for public keys; served by the ``keystore`` plugin.

    Only runs when the encryption scheme asks for a key store (``ctx.open_keystore()``), or when
    ``target=local`` deploys an encrypted service, which fetches keys from that store only.
    Return an object with ``put(key_id, data) -> url``, ``delete(key_id)`` and ``account_url``
    (the blob service's URL as the service reaches it; see :class:`aideploy.keystore.KeyStore`).
    """


# ----------------------------------------------------------------------------- stage: keys


@hookspec(firstresult=True)
def aideploy_setup_keys(cfg, ctx, model, service):
    """Generate the client's keys and publish the public ones; served by the ``encryption`` plugin.

    ``model`` is None in ``mode=predict`` without a model; ``service`` is then what the
    service said about itself (a :class:`~aideploy.artifacts.ServiceInfo`: features, classes,
    the fast scheme's public parameters), or None if it said nothing.

    Return a :class:`~aideploy.artifacts.KeySession`, or None when the scheme has no keys.
    Uploaded blobs must be registered with ``ctx.resources`` for deletion. With
    ``register=True`` (the built-in schemes), the runner then sends ``public`` to aideploy's
    service once, before any query (:func:`aideploy.client.register_keys`): set it only for a
    scheme aideploy's ``score.py`` serves.
    """


# ----------------------------------------------------------------------------- the prediction loop


@hookspec(firstresult=True)
def aideploy_predict_engine(cfg, ctx, scoring):
    """Score every row of the run's data into predictions; served by the plugin ``predict.engine`` names.

    Called once, in place of the encrypt, predict and decrypt stages (``mode=run`` and
    ``mode=predict``), after the keys stage. ``cfg`` is the ``predict`` config node; ``scoring``
    is the run's :class:`aideploy.engines.Scoring`: ``scoring.rows_into(dataset, writer)`` sends
    rows a chunk at a time through the encryption plugin's encrypt, the target's predict and the
    encryption plugin's decrypt hooks (or, with ``predict.local_model``, the model in process)
    into a :class:`~aideploy.predictions.PredictionsWriter`; ``scoring.spec()`` is what a client
    in another process needs to do the same (:meth:`aideploy.engines.ClientSpec.open`).
    Observers see the encrypt, predict and decrypt stages around the engine's work.

    Return an :class:`aideploy.engines.Scored`: the run's :class:`~aideploy.artifacts.Traffic`
    and its :class:`~aideploy.predictions.Predictions` (what the evaluate stage reads back).
    Raise :class:`~aideploy.errors.AideployError` saying how many rows were written and how to
    resume.
    """


# ----------------------------------------------------------------------------- stage: encrypt


@hookspec(firstresult=True)
def aideploy_encrypt(cfg, ctx, keys, dataset):
    """Turn ``dataset.X_test`` into request bodies; served by the ``encryption`` plugin.

    Called once per chunk of rows (``predict.chunk_rows``): ``dataset`` is that chunk, in
    memory. Return :class:`~aideploy.artifacts.Requests`, in sample order.
    """


# ----------------------------------------------------------------------------- stage: predict


@hookspec(firstresult=True)
def aideploy_predict(cfg, ctx, endpoint, network, requests):
    """Send every request to the service; served by the ``target`` plugin.

    Called once per chunk of rows by the engine, and for every further request a scheme's answer
    needs (the fast MLP's rounds, through :meth:`aideploy.context.RunContext.send`). Must call the service from the clients' side of
    ``network`` (``network.call``), through ``ctx.http_client(endpoint, timeout)`` to keep
    its connections and ``predict.concurrency`` requests in flight. Return
    :class:`~aideploy.artifacts.Responses` in request order; raise
    :class:`~aideploy.errors.PredictError` on an error answer.
    """


# ----------------------------------------------------------------------------- stage: decrypt


@hookspec(firstresult=True)
def aideploy_decrypt(cfg, ctx, keys, requests, responses):
    """Turn one chunk's responses into what they say; served by the ``encryption`` plugin.

    Return :class:`~aideploy.artifacts.Scores` for the chunk's samples, in order; the run
    writes them to the predictions file (:mod:`aideploy.predictions`).
    """


# ----------------------------------------------------------------------------- stage: evaluate


@hookspec
def aideploy_evaluate(ctx, dataset, model, keys, traffic, predictions, service):
    """Compute metrics for ``results.json``; called on every plugin, once, after the last chunk.

    ``predictions`` is the predictions file (:class:`aideploy.predictions.Predictions`, read
    back with ``predictions.chunks(size)`` beside ``dataset.chunks(size)``, so memory stays
    bounded); ``traffic`` holds every request's size and latency
    (:class:`~aideploy.artifacts.Traffic`). ``model`` is None in ``mode=predict`` without a
    model; ``service`` is what the service said about itself, or None. Return a dict of JSON-serialisable metrics or None. The dicts are merged in call order;
    a key given twice is an error naming both plugins.
    """


# ----------------------------------------------------------------------------- stage: teardown


@hookspec
def aideploy_teardown(ctx, status):
    """Release what is not in ``ctx.resources``; called on every plugin when the run ends.

    Runs on success, failure and interruption (``status`` says which), before the registered
    resources are released in reverse order. Must not raise for things already gone.
    """


# ----------------------------------------------------------------------------- observers


@hookspec
def aideploy_before_stage(stage, ctx):
    """Called on every plugin just before ``stage`` (a :class:`aideploy.stages.Stage`) runs.

    The encrypt, predict and decrypt stages run once per chunk of rows
    (:mod:`aideploy.client`): each starts with its first chunk, so the three ``before_stage``
    calls come first, then their three ``after_stage`` calls after the last chunk.
    """


@hookspec
def aideploy_after_stage(stage, ctx, result, seconds):
    """Called on every plugin after ``stage`` succeeded with ``result`` in ``seconds``.

    For the chunked stages ``result`` is the run's :class:`~aideploy.artifacts.Traffic`
    (encrypt, predict) or its :class:`~aideploy.predictions.Predictions` (decrypt).
    """


@hookspec
def aideploy_on_stage_error(stage, ctx, error):
    """Called on every plugin when ``stage`` raised ``error`` (an exception, or an interrupt).

    Takes the before hook's arguments plus the error. Teardown still follows.
    """


@hookspec
def aideploy_run_end(ctx, results):
    """Called on every plugin once ``results`` (the dict written to results.json) is final.

    An observer that adds to ``results`` (e.g. where it logged the run) writes results.json
    again itself (``aideploy.results.write``).
    """


@hookspec
def aideploy_sweep_end(sweep_dir, report, config):
    """Called on every plugin once per multirun (``-m``), after the last job, in the process that
    launched the sweep: ``sweep_dir`` is the multirun dir, ``report`` the
    :class:`aideploy.sweep.Report` just written (its ``rows`` and ``files``), ``config`` the
    sweep's composed config (with ``hydra``). Jobs may have run in other processes (joblib,
    ray): anything shared with them goes through files in ``sweep_dir``. Return value ignored.
    """
