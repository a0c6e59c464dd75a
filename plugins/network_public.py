"""``network=public``: the service is reached directly, from this process's own network."""

from aideploy import hookimpl
from aideploy.artifacts import NetworkInfo


@hookimpl
def aideploy_configure_network(cfg):
    return NetworkInfo(kind="public", bind_host=cfg.host, client_host=cfg.host)
