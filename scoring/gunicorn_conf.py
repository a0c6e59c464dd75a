"""gunicorn settings for ``target=local``: listen only where the network says, and stop with aideploy.

``azmlinfsrv`` binds gunicorn to 0.0.0.0, so a service meant for loopback (``network=public``,
``network.host=127.0.0.1``) would answer on every interface of the machine. aideploy loads this
file through ``GUNICORN_CMD_ARGS=--config ...`` and ``on_starting`` rebinds each address to
``$AIDEPLOY_BIND_HOST``, keeping its port, before gunicorn opens a socket.

A server that ``mode=run`` or ``mode=serve`` started must not outlive that process, even when it
is killed with SIGKILL and cannot tear down: ``$AIDEPLOY_WATCHDOG_FD`` is the read end of a pipe
whose write end only aideploy holds (``aideploy.process.ManagedProcess``). ``when_ready`` watches
it from the master: at end-of-file the master stops as on SIGTERM (its workers with it), and if it
has not within ``graceful_timeout`` the whole process group is killed.

Azure targets do not use this file: there the platform decides where the container listens
and how long it lives. Both variables are declared in ``settings.py``; they are read here because
gunicorn loads this file before the service's package is importable.
"""

import os
import signal
import threading


def on_starting(server):
    host = os.environ.get("AIDEPLOY_BIND_HOST")
    if not host:
        return
    host = f"[{host}]" if ":" in host else host
    server.cfg.set("bind", [f"{host}:{address.rsplit(':', 1)[1]}" for address in server.cfg.bind])


def when_ready(server):
    fd = os.environ.get("AIDEPLOY_WATCHDOG_FD")
    if not fd:
        return

    def watch():
        while os.read(int(fd), 1):  # nothing is ever written: only end-of-file comes
            pass
        server.log.warning("aideploy, which started this server, has ended: stopping")
        os.kill(os.getpid(), signal.SIGTERM)
        threading.Event().wait(server.cfg.graceful_timeout + 5)
        os.killpg(os.getpgid(0), signal.SIGKILL)

    threading.Thread(target=watch, name="aideploy-watchdog", daemon=True).start()
