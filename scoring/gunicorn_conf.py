"""gunicorn settings for ``target=local``: listen only where the network says.

``azmlinfsrv`` binds gunicorn to 0.0.0.0, so a service meant for loopback (``network=public``,
``network.host=127.0.0.1``) would answer on every interface of the machine. aideploy loads this
file through ``GUNICORN_CMD_ARGS=--config ...`` and ``on_starting`` rebinds each address to
``$AIDEPLOY_BIND_HOST``, keeping its port, before gunicorn opens a socket. Azure targets do
not use it: there the platform decides where the container listens.
"""

import os


def on_starting(server):
    host = os.environ.get("AIDEPLOY_BIND_HOST")
    if not host:
        return
    host = f"[{host}]" if ":" in host else host
    server.cfg.set("bind", [f"{host}:{address.rsplit(':', 1)[1]}" for address in server.cfg.bind])
