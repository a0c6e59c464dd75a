"""``keystore=azure_blob``: a real Azure Storage account.

Credentials come only from environment variables: a connection string (SAS signed with its
account key), or an account URL used with DefaultAzureCredential (user delegation SAS).
Neither is ever written to outputs.
"""

import os

from aideploy import hookimpl
from aideploy.blobkeys import BlobKeyStore, KeyStoreError
from aideploy.errors import ConfigError
from aideploy.keystore import KeyStore


@hookimpl
def aideploy_open_keystore(cfg, network):
    conn = os.environ.get(cfg.connection_string_env) if cfg.connection_string_env else None
    url = os.environ.get(cfg.account_url_env) if cfg.account_url_env else None
    try:
        if conn:
            store = BlobKeyStore.from_connection_string(conn, cfg.container, sas_ttl=cfg.sas_ttl_seconds)
        elif url:
            store = BlobKeyStore.from_account_url(url, cfg.container, sas_ttl=cfg.sas_ttl_seconds)
        else:
            raise ConfigError(
                f"keystore=azure_blob needs ${cfg.connection_string_env} or ${cfg.account_url_env} to be set",
                hint="export the storage account's connection string, or its URL (https://<account>.blob.core."
                "windows.net) after `az login`; or use keystore=azurite")
    except (KeyStoreError, ValueError) as exc:
        raise ConfigError(f"keystore=azure_blob: {exc}", hint="check the storage account settings") from None
    return KeyStore(store, network, f"azure blob {store.account_name}")
