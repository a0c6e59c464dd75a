"""The key store a run uses: a :class:`~aideploy.blobkeys.BlobKeyStore` reached from the
clients' side of the network, with errors in aideploy's family."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from aideploy.artifacts import NetworkInfo
from aideploy.azurite import DEV_ACCOUNT_NAME
from aideploy.blobkeys import BlobKeyStore, KeyStoreError
from aideploy.errors import ConfigError, StageError


MB = 1024 * 1024
SPACE_MARGIN = 1 * MB  # what a store adds to a blob on its disk (metadata, journal)


class KeyStore:
    """What the keys stage needs: ``put(key_id, data) -> read-only SAS URL`` and ``delete``.

    ``data_dir``: where the store keeps its blobs, when it is on this machine (aideploy's own
    Azurite). Then a key that cannot fit is refused up front with the reason: Azurite itself
    answers a full disk with a bare HTTP 500, after the SDK has retried the whole upload.
    """

    def __init__(self, store: BlobKeyStore, network: NetworkInfo, where: str, data_dir: Path | None = None) -> None:
        self._store = store
        self._network = network
        self.where = where  # e.g. "azurite 10.0.1.5:41234"; never a credential
        self.data_dir = data_dir

    @property
    def account_url(self) -> str:
        """The blob service's URL as the service reaches it (no credentials): the deployment's key store."""
        return self._store.account_url

    @property
    def container(self) -> str:
        return self._store.container

    def _call(self, what: str, fn, *args) -> Any:
        try:
            return self._network.call(fn, *args)
        except (KeyStoreError, ValueError) as exc:
            raise StageError(f"key store ({self.where}): could not {what}: {exc}",
                             hint="check that the key store is running and the credentials are valid") from None

    def put(self, key_id: str, data: bytes) -> str:
        """Upload ``data`` as blob ``key_id``; return a read-only SAS URL for that blob alone."""
        self._check_space(key_id, len(data))
        return self._call(f"upload key {key_id}", self._store.put, key_id, data)

    def _check_space(self, key_id: str, size: int) -> None:
        if self.data_dir is None:
            return
        try:
            free = shutil.disk_usage(self.data_dir).free
        except OSError:
            return
        if free < size + SPACE_MARGIN:
            raise StageError(f"key store ({self.where}): no room for key {key_id}: it is {size / MB:.1f} MB and "
                             f"the store's disk has {free / MB:.1f} MB free ({self.data_dir})",
                             hint="free some space there; aideploy's Azurite keeps its data under $TMPDIR, so "
                             "TMPDIR=<a bigger disk> also works")

    def delete(self, key_id: str) -> None:
        """Delete blob ``key_id``; deleting what is gone is fine."""
        self._call(f"delete key {key_id}", self._store.delete, key_id)

    def summary(self) -> dict[str, Any]:
        return {"store": self.where, "container": self._store.container, "sas_ttl_s": int(self._store.sas_ttl)}


def service_keystore(ctx) -> str | None:
    """The key store the service at ``scoring_uri`` fetches keys from, as it says (``mode=predict``)."""
    service = ctx.artifacts.get("service")
    return service.keystore if service is not None else None


def is_emulator(url: str) -> bool:
    """An Azurite account URL (path-style, its development account), not a real storage account."""
    from urllib.parse import urlsplit

    return urlsplit(url).path.strip("/").split("/")[0] == DEV_ACCOUNT_NAME


def check_service_keystore(ctx, store: KeyStore) -> None:
    """The run's key store is the one the service fetches from, or a ConfigError before any key is
    uploaded (the service would refuse the key: it reads only its own store)."""
    wanted = service_keystore(ctx)
    if wanted and wanted.rstrip("/").lower() != store.account_url.rstrip("/").lower():
        raise ConfigError(f"the service at {ctx.cfg.scoring_uri} reads public keys only from its key store {wanted}, "
                          f"not from this run's ({store.where})",
                          hint="use keystore=azure_blob with that storage account's credentials" if not is_emulator(
                              wanted) else "use keystore=azurite without connection_string_env: it then uses the "
                          "service's Azurite")


def publish_public_keys(ctx, key_id: str, data: bytes) -> str:
    """Upload a client's public keys to the run's key store, deleted again at teardown.

    Returns the read-only SAS URL for that one blob, which requests carry as ``key_url``.
    """
    store = ctx.open_keystore()
    check_service_keystore(ctx, store)
    url = store.put(key_id, data)
    # A store aideploy started lives in its temp dir (journaled with it); others need their
    # credentials to delete the blob later: the journal names the variable, never its value.
    record = None if store.data_dir else {"kind": "blob", "key_id": key_id, "container": store.container,
                                          "store": store.where,
                                          "connection_string_env": ctx.cfg.keystore.get("connection_string_env")}
    ctx.resources.add(f"public keys blob {key_id}", lambda: store.delete(key_id), record)
    return url
