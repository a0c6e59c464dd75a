"""Typed schemas for every config group, registered in Hydra's ConfigStore.

Each option YAML in ``conf/<group>/`` extends its schema (``/schema/<group>/<option>``), so
an unknown key, a wrong type or a missing value fails when the config is composed, before
any stage runs. The ``plugin`` field of each group names the registered plugin that serves
that group's stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, ClassVar, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from aideploy.stages import Mode


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None) -> Any:
    """A field whose value must lie in a range, checked by :mod:`aideploy.validate` before any stage."""
    bounds = {name: value for name, value in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if value is not None}
    return field(default=default, metadata={"bounds": bounds})

# ----------------------------------------------------------------------------- data


@dataclass
class DataConfig:
    plugin: str = MISSING
    limit: Optional[int] = bounded(None, ge=1)


@dataclass
class PackagedData(DataConfig):
    """A data set from a package, split into a training and a test part."""

    test_size: float = bounded(0.25, gt=0, lt=1)
    seed: int = 0


@dataclass
class DigitsData(PackagedData):
    plugin: str = "digits"


@dataclass
class DiabetesData(PackagedData):
    plugin: str = "diabetes"


@dataclass
class MnistIdxData(DataConfig):
    plugin: str = "mnist_idx"
    images: str = MISSING
    labels: Optional[str] = None


@dataclass
class TableData(DataConfig):
    """A table file: one sample per row; a label column is optional."""

    path: str = MISSING
    label_column: Optional[str] = None  # a column name or 0-based position; null: no labels
    feature_columns: Optional[List[str]] = None  # null: every column but the label


@dataclass
class CsvData(TableData):
    plugin: str = "csv"
    header: Optional[bool] = None  # null: detect (a first line of only numbers is data)
    delimiter: str = ","


@dataclass
class ParquetData(TableData):
    plugin: str = "parquet"


@dataclass
class NpyData(DataConfig):
    plugin: str = "npy"
    path: str = MISSING
    labels: Optional[str] = None
    features_key: str = "X"
    labels_key: str = "y"


# ----------------------------------------------------------------------------- model


@dataclass
class ModelConfig:
    plugin: str = MISSING
    name: str = MISSING


@dataclass
class SklearnTrainModel(ModelConfig):
    plugin: str = "sklearn_train"
    name: str = "sklearn_digits"
    C: float = bounded(1.0, gt=0)
    max_iter: int = bounded(5000, ge=1)
    seed: int = 0
    test_size: float = bounded(0.25, gt=0, lt=1)


@dataclass
class ModelFromPath(ModelConfig):
    """A model the user already has, at ``path`` (a file, or an MLflow model directory)."""

    path: str = MISSING


@dataclass
class SklearnPickleModel(ModelFromPath):
    plugin: str = "sklearn_pickle"
    name: str = "sklearn_model"


@dataclass
class OnnxModel(ModelFromPath):
    plugin: str = "onnx_model"
    name: str = "onnx_model"


@dataclass
class MlflowModel(ModelFromPath):
    plugin: str = "mlflow_model"
    name: str = "mlflow_model"


# ----------------------------------------------------------------------------- scoring


@dataclass
class ScoringConfig:
    plugin: str = MISSING


@dataclass
class BuiltinScoring(ScoringConfig):
    plugin: str = "builtin_scoring"


@dataclass
class CustomScoring(ScoringConfig):
    plugin: str = "custom_scoring"
    source_dir: str = MISSING
    entry_script: str = "score.py"


# ----------------------------------------------------------------------------- environment


@dataclass
class EnvironmentConfig:
    plugin: str = MISSING
    name: str = "aideploy-env"
    python: str = "3.11"
    channels: List[str] = field(default_factory=lambda: ["conda-forge"])
    conda: List[str] = field(default_factory=list)
    pip: List[str] = field(default_factory=list)
    extra_pip: List[str] = field(default_factory=list)  # added to pip (and to what the model needs)
    azure_pip: List[str] = field(default_factory=list)


@dataclass
class CondaEnvironment(EnvironmentConfig):
    """An isolated environment built from the spec with uv (``aideploy.uvenv``), cached per spec."""

    plugin: str = "conda"
    envs_dir: Optional[str] = None
    keep_unused_days: float = bounded(30.0, gt=0)


@dataclass
class CurrentEnvironment(EnvironmentConfig):
    """This interpreter, checked against the spec: the fast edit-run loop."""

    plugin: str = "current"
    check_local: bool = True


# ----------------------------------------------------------------------------- network


@dataclass
class NetworkConfig:
    plugin: str = MISSING


@dataclass
class PublicNetwork(NetworkConfig):
    plugin: str = "public"
    host: str = "127.0.0.1"


@dataclass
class VnetNetwork(NetworkConfig):
    plugin: str = "vnet"
    vnet_name: Optional[str] = None  # Azure (target=aci): required, no default is guessed
    subnet_name: Optional[str] = None
    location: Optional[str] = None
    resource_group: Optional[str] = None
    address_range: str = "10.0.1.0/24"
    service_ip: str = "10.0.1.4"
    store_ip: str = "10.0.1.5"
    client_ip: str = "10.0.1.10"


# ----------------------------------------------------------------------------- encryption


@dataclass
class EncryptionConfig:
    """Every option of the group has the settings of every scheme, so that a sweep can vary one
    scheme's setting beside another scheme (``-m encryption=none,fast encryption.max_error=1e-3,1e-2``).
    A setting an option does not use stays None; given one in a single run, the run stops
    (:func:`not_applied`); in a sweep the job records it as not applied."""

    plugin: str = MISSING
    batch_size: Optional[int] = bounded(None, ge=1)  # deprecated: predict.batch_size
    max_new_keys_per_hour: Optional[int] = bounded(None, ge=0, le=100_000)
    x_bound: Optional[float] = bounded(None, gt=0)
    max_error: Optional[float] = bounded(None, gt=0)
    max_queries_per_key: Optional[int] = bounded(None, ge=0)
    max_samples_per_query: Optional[int] = bounded(None, ge=0)
    round_ttl_seconds: Optional[float] = bounded(None, gt=0, le=3600)
    # the settings this option uses (the others are None unless a sweep gives them)
    uses: ClassVar[frozenset[str]] = frozenset({"batch_size"})


@dataclass
class NoEncryption(EncryptionConfig):
    plugin: str = "plain"


@dataclass
class SealEncryption(EncryptionConfig):
    plugin: str = "seal"
    max_new_keys_per_hour: Optional[int] = bounded(100, ge=0, le=100_000)
    uses: ClassVar[frozenset[str]] = frozenset({"batch_size", "max_new_keys_per_hour"})


@dataclass
class FastEncryption(EncryptionConfig):
    plugin: str = "fast"
    max_new_keys_per_hour: Optional[int] = bounded(100, ge=0, le=100_000)
    x_bound: Optional[float] = bounded(None, gt=0)  # None: each feature's own range (aideploy_scoring.inputranges)
    max_error: Optional[float] = bounded(1e-3, gt=0)
    max_queries_per_key: Optional[int] = bounded(0, ge=0)
    max_samples_per_query: Optional[int] = bounded(1, ge=0)
    round_ttl_seconds: Optional[float] = bounded(300.0, gt=0, le=3600)
    uses: ClassVar[frozenset[str]] = frozenset({"batch_size", "max_new_keys_per_hour", "x_bound", "max_error",
                                               "max_queries_per_key", "max_samples_per_query",
                                               "round_ttl_seconds"})


def not_applied(encryption_cfg: Any) -> list[str]:
    """``encryption.<setting>=<value>`` for each setting given that the chosen option does not use
    (only a sweep gives one: see :class:`EncryptionConfig`)."""
    from omegaconf import OmegaConf

    kind = OmegaConf.get_type(encryption_cfg)
    uses = getattr(kind, "uses", None)
    if uses is None:  # a plugin's own schema, not derived from EncryptionConfig
        return []
    shared = {f.name for f in fields(EncryptionConfig)} - {"plugin"}
    return [f"encryption.{name}={encryption_cfg[name]}" for name in sorted(shared - uses)
            if name in encryption_cfg and encryption_cfg[name] is not None]


# ----------------------------------------------------------------------------- target


@dataclass
class TargetConfig:
    plugin: str = MISSING
    request_timeout: float = bounded(60.0, gt=0)


@dataclass
class LocalTarget(TargetConfig):
    plugin: str = "local"
    port: int = bounded(0, ge=0, le=65535)
    worker_count: int = bounded(1, ge=1)
    startup_timeout: float = bounded(90.0, gt=0)
    max_request_mb: float = bounded(64.0, gt=0)
    log_tail_lines: int = bounded(40, ge=0)
    auth: bool = True


@dataclass
class AzureWorkspace:
    """Which Azure ML workspace: names of env vars and a config file, never the values themselves.

    An explicit ``config_file`` wins; otherwise the three env vars when all are set; otherwise a
    ``config.json`` found as ``Workspace.from_config()`` finds it (``.azureml/``, ``aml_config/``
    or the directory itself, from the working directory up).
    """

    config_file: Optional[str] = None
    subscription_id_env: str = "AZURE_SUBSCRIPTION_ID"
    resource_group_env: str = "AZURE_RESOURCE_GROUP"
    workspace_name_env: str = "AZUREML_WORKSPACE_NAME"


@dataclass
class AciTarget(TargetConfig):
    """``target=aci``: Azure Container Instances through azureml-core (SDK v1), seeds 000 and 004."""

    plugin: str = "aci"
    cpu_cores: float = bounded(1.0, gt=0)
    memory_gb: float = bounded(1.0, gt=0)
    tags: Dict[str, str] = field(default_factory=dict)  # added to the tags made from the model and run
    description: Optional[str] = None  # null: a sentence from the model and run
    properties: Dict[str, str] = field(default_factory=dict)  # the service's properties: only these
    auth_enabled: bool = True
    overwrite: bool = False
    deploy_timeout: float = bounded(1800.0, gt=0)
    log_tail_lines: int = bounded(40, ge=0)
    check_subnet: bool = True
    workspace: AzureWorkspace = field(default_factory=AzureWorkspace)


#: The base image under an Azure ML deployment's conda environment (online and batch): pinned, azureml-core
#: 1.61's DEFAULT_CPU_IMAGE, so a later rebuild gets the same OS and libraries.
AZUREML_BASE_IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:20251130.v1"


class EndpointAuthMode(str, Enum):
    """How a managed online endpoint authenticates callers; it always requires one of these."""

    key = "key"
    aml_token = "aml_token"
    aad_token = "aad_token"


@dataclass
class ProbeTiming:
    """A managed deployment's liveness and readiness probes for one encryption scheme (seconds)."""

    initial_delay: int = bounded(10, ge=0)
    timeout: int = bounded(2, ge=1)


@dataclass
class ManagedEndpointTarget(TargetConfig):
    """``target=managed_endpoint``: an Azure ML managed online endpoint through azure-ai-ml (SDK v2)."""

    plugin: str = "managed_endpoint"
    deployment: str = "blue"
    instance_type: str = "Standard_DS3_v2"
    instance_count: int = bounded(1, ge=1)
    worker_count: int = bounded(1, ge=1)
    image: str = AZUREML_BASE_IMAGE
    probes: Dict[str, ProbeTiming] = field(default_factory=lambda: {
        "plain": ProbeTiming(10, 2), "fast": ProbeTiming(20, 2), "seal": ProbeTiming(30, 15)})
    auth_mode: EndpointAuthMode = EndpointAuthMode.key
    tags: Dict[str, str] = field(default_factory=dict)  # added to the tags made from the model and run
    description: Optional[str] = None  # null: a sentence from the model and run
    properties: Dict[str, str] = field(default_factory=dict)  # the deployment's properties: only these
    delete_registrations: bool = False  # mode=delete: also delete the code, environment and model versions it registered
    key_vault: Optional[str] = None  # the service's secrets: null = the workspace's Key Vault, else a vault's name
    deploy_timeout: float = bounded(1800.0, gt=0)
    log_tail_lines: int = bounded(40, ge=0)
    workspace: AzureWorkspace = field(default_factory=AzureWorkspace)


class BatchOutputAction(str, Enum):
    """What a batch deployment does with ``run()``'s rows."""

    append_row = "append_row"  # append them to target.output_file_name
    summary_only = "summary_only"  # keep only the job's summary


class BatchLoggingLevel(str, Enum):
    info = "info"
    warning = "warning"
    debug = "debug"


@dataclass
class BatchRetry:
    """How a batch deployment retries a mini-batch whose run() failed or took too long."""

    max_retries: int = bounded(3, ge=0)
    timeout: int = bounded(300, ge=1)  # seconds one run() call may take


@dataclass
class BatchEndpointTarget(TargetConfig):
    """``target=batch_endpoint``: an Azure ML batch endpoint and deployment, planned (``dry_run=true``) through
    azure-ai-ml (SDK v2); aideploy's ``batch_score.py`` scores the files of each job on a compute cluster."""

    plugin: str = "batch_endpoint"
    deployment: str = "blue"
    compute: str = "aideploy-batch"
    create_compute: bool = True
    instance_type: str = "Standard_DS3_v2"
    max_instances: int = bounded(2, ge=1)
    idle_seconds: int = bounded(120, ge=0)
    instance_count: int = bounded(1, ge=1)
    mini_batch_size: int = bounded(10, ge=1)
    max_concurrency_per_instance: int = bounded(1, ge=1)
    output_action: BatchOutputAction = BatchOutputAction.append_row
    output_file_name: str = "predictions.csv"
    error_threshold: int = bounded(-1, ge=-1)
    retry: BatchRetry = field(default_factory=BatchRetry)
    logging_level: BatchLoggingLevel = BatchLoggingLevel.info
    image: str = AZUREML_BASE_IMAGE
    tags: Dict[str, str] = field(default_factory=dict)
    description: Optional[str] = None
    properties: Dict[str, str] = field(default_factory=dict)
    workspace: AzureWorkspace = field(default_factory=AzureWorkspace)


# ----------------------------------------------------------------------------- keystore


@dataclass
class KeystoreConfig:
    plugin: str = MISSING
    container: str = "aideploy-keys"
    sas_ttl_seconds: int = bounded(900, ge=1)


@dataclass
class AzuriteKeystore(KeystoreConfig):
    plugin: str = "azurite"
    host: str = "127.0.0.1"
    startup_timeout: float = bounded(30.0, gt=0)
    connection_string_env: Optional[str] = None


@dataclass
class AzureBlobKeystore(KeystoreConfig):
    plugin: str = "azure_blob"
    connection_string_env: Optional[str] = "AZURE_STORAGE_CONNECTION_STRING"
    account_url_env: Optional[str] = "AZURE_STORAGE_ACCOUNT_URL"


# ----------------------------------------------------------------------------- tracking


@dataclass
class TrackingConfig:
    plugin: Optional[str] = None  # an observer plugin; none for tracking=none


@dataclass
class NoTracking(TrackingConfig):
    pass


@dataclass
class MlflowTracking(TrackingConfig):
    plugin: Optional[str] = "mlflow_tracking"
    uri: Optional[str] = None
    experiment: str = "aideploy"
    log_model: bool = False
    log_predictions: bool = False
    workspace: AzureWorkspace = field(default_factory=AzureWorkspace)


# ----------------------------------------------------------------------------- predict


class OutputFormat(str, Enum):
    csv = "csv"
    parquet = "parquet"


class ExtraColumns(str, Enum):
    """What the client does with data columns the model does not take."""

    error = "error"
    drop = "drop"


@dataclass
class RayEngine:
    """``predict.engine=ray``: files scored in parallel by Ray workers (``aideploy_plugins.engine_ray``)."""

    # A running Ray cluster to use (its address, e.g. 10.0.0.5:6379); null: a local Ray started for the
    # run on this machine and stopped with it.
    address: Optional[str] = None
    # Clients scoring files at once (Ray actors): each scores one file at a time, with its own keys
    # and connections, predict.concurrency requests in flight.
    workers: int = bounded(2, ge=1, le=1024)
    # The local Ray's CPUs (null: this machine's); the workers share them.
    num_cpus: Optional[int] = bounded(None, ge=1)
    # Seconds the local Ray, or the connection to predict.ray.address, may take to come up.
    startup_timeout: float = bounded(60.0, gt=0)


@dataclass
class PredictConfig:
    """How the client sends the rows and where their predictions go (``mode=run`` and ``predict``)."""

    engine: str = "stream"  # the engine plugin that drives the rows (see aideploy.engines)
    local_model: bool = False  # score with the model in the engine's own workers, no service (mode=predict)
    ray: RayEngine = field(default_factory=RayEngine)

    batch_size: Optional[int] = bounded(None, ge=1)  # rows per request; null: sized to ~256 KB per request
    concurrency: int = bounded(4, ge=1, le=256)
    chunk_rows: int = bounded(4096, ge=1)
    extra_columns: ExtraColumns = ExtraColumns.error
    output: Optional[str] = None
    output_format: OutputFormat = OutputFormat.csv
    resume: bool = False
    progress_seconds: float = bounded(5.0, gt=0)


# ----------------------------------------------------------------------------- update


@dataclass
class UpdateConfig:
    """How ``mode=update`` replaces a deployment's model (see :mod:`aideploy.update`)."""

    # Percentages of the traffic the new deployment gets, one step after another, ending at 100
    # (managed_endpoint; the other targets switch at once).
    traffic_steps: List[int] = field(default_factory=lambda: [100])
    # Rows of the test set sent to the new version before any traffic moves; every answer must agree
    # with the model in process.
    smoke_samples: int = bounded(20, ge=1, le=10000)
    # managed_endpoint: the new deployment's name; null = the other colour (blue <-> green).
    new_deployment: Optional[str] = None


# ----------------------------------------------------------------------------- root


@dataclass
class AideployConfig:
    mode: Mode = Mode.run
    dry_run: bool = False
    home: str = MISSING
    deployment_name: Optional[str] = None
    scoring_uri: Optional[str] = None
    scoring_key_env: str = "AIDEPLOY_SCORING_KEY"
    plugins: List[str] = field(default_factory=list)
    predict: PredictConfig = field(default_factory=PredictConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    data: Any = MISSING
    model: Any = MISSING
    scoring: Any = MISSING
    environment: Any = MISSING
    network: Any = MISSING
    encryption: Any = MISSING
    target: Any = MISSING
    keystore: Any = MISSING
    tracking: Any = MISSING


SCHEMAS: dict[str, dict[str, type]] = {
    "data": {"digits": DigitsData, "diabetes": DiabetesData, "mnist_idx": MnistIdxData, "csv": CsvData,
             "parquet": ParquetData, "npy": NpyData},
    "model": {"sklearn_digits": SklearnTrainModel, "sklearn_pickle": SklearnPickleModel, "onnx": OnnxModel,
              "mlflow": MlflowModel},
    "scoring": {"builtin": BuiltinScoring, "custom": CustomScoring},
    "environment": {"conda": CondaEnvironment, "current": CurrentEnvironment},
    "network": {"public": PublicNetwork, "vnet": VnetNetwork},
    "encryption": {"none": NoEncryption, "seal": SealEncryption, "fast": FastEncryption},
    "target": {"local": LocalTarget, "aci": AciTarget, "managed_endpoint": ManagedEndpointTarget,
               "batch_endpoint": BatchEndpointTarget},
    "keystore": {"azurite": AzuriteKeystore, "azure_blob": AzureBlobKeystore},
    "tracking": {"none": NoTracking, "mlflow": MlflowTracking},
}
"""Schema of each built-in option, by group; ``conf/<group>/<option>.yaml`` extends it."""


def plugin_options(registry) -> dict[str, dict[str, tuple[type, str]]]:
    """Options added by plugins: ``{group: {option: (schema, plugin name)}}``.

    Raises PluginError when an option is built in or claimed twice, or names no known group.
    """
    from aideploy.errors import PluginError

    claimed: dict[str, dict[str, tuple[type, str]]] = {}
    for plugin in registry.plugins():
        if "aideploy_config_options" not in plugin.hooks:
            continue
        offered = registry.pm.get_plugin(plugin.name).aideploy_config_options() or {}
        for group, options in offered.items():
            if group not in SCHEMAS:
                raise PluginError(f"plugin {plugin.name!r} ({plugin.origin}) adds options to unknown group {group!r}",
                                  hint=f"config groups are: {', '.join(SCHEMAS)}")
            for option, schema in options.items():
                owner = "aideploy (built-in)" if option in SCHEMAS[group] else None
                owner = owner or (claimed.get(group, {}).get(option, (None, None))[1])
                if owner:
                    raise PluginError(f"plugin {plugin.name!r} ({plugin.origin}) claims option {group}={option}, "
                                      f"already taken by {owner}",
                                      hint="rename the plugin's option")
                claimed.setdefault(group, {})[option] = (schema, plugin.name)
    return claimed


def register_configs(store: ConfigStore | None = None, registry=None) -> None:
    """Put the root schema, every built-in option's schema and plugins' options in the ConfigStore."""
    store = store or ConfigStore.instance()
    store.store(name="aideploy_schema", node=AideployConfig)
    for group, options in SCHEMAS.items():
        for option, schema in options.items():
            store.store(group=f"schema/{group}", name=option, node=schema)
    if registry is not None:
        for group, options in plugin_options(registry).items():
            for option, (schema, _) in options.items():
                store.store(group=group, name=option, node=schema)
