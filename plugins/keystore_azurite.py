"""``keystore=azurite``: Azurite's blob service from the project's node_modules.

It runs where the network puts key stores (loopback, or the private network's store
address), on a free port with a temp data dir, and is stopped, data deleted, at teardown.
With ``connection_string_env`` naming a variable that is set, an Azurite already running is
used instead and nothing is started; so is, for ``mode=predict``, the Azurite of the service
(the only store it fetches keys from, which its ``GET`` says).
"""

import os
from urllib.parse import urlsplit

from aideploy import hookimpl
from aideploy.azurite import AzuriteError, AzuriteNotInstalledError, AzuriteServer, dev_connection_string
from aideploy.blobkeys import BlobKeyStore
from aideploy.errors import ConfigError, StageError
from aideploy.keystore import KeyStore, is_emulator, service_keystore
from aideploy.resources import path_record


@hookimpl
def aideploy_open_keystore(cfg, ctx, network):
    existing = os.environ.get(cfg.connection_string_env) if cfg.connection_string_env else None
    served = service_keystore(ctx)
    data_dir = None
    if existing:
        where = "existing Azurite/Azure account"
        conn = existing
    elif served and is_emulator(served):
        # mode=predict against a service that reads keys from its own Azurite: put them there (its
        # development account's key is published by Microsoft, not a secret)
        where = f"the service's Azurite {urlsplit(served).netloc}"
        conn = dev_connection_string(served)
    else:
        server = AzuriteServer(host=network.store_host, argv_prefix=network.store_argv_prefix,
                               startup_timeout=cfg.startup_timeout)
        try:
            network.call(server.start)  # the readiness probe comes from where the clients are
        except AzuriteNotInstalledError as exc:
            raise ConfigError(str(exc), hint="run `npm ci` in the aideploy checkout (`make install` does it)") from None
        except AzuriteError as exc:
            raise StageError(f"Azurite did not start: {exc}", hint="see the log tail above") from None
        ctx.resources.add(f"Azurite's temp dir {server.work_dir}", lambda: None, path_record(server.work_dir))
        ctx.resources.add(f"Azurite (pid {server.pid})", server.stop, server.record())
        where = f"azurite {network.store_host}:{server.port}"
        conn = server.connection_string
        data_dir = server.data_dir
    store = BlobKeyStore.from_connection_string(conn, cfg.container, sas_ttl=cfg.sas_ttl_seconds)
    return KeyStore(store, network, where, data_dir=data_dir)
