"""``network=vnet``: a private network. Locally, Linux network namespaces (aideploy.netns).

The service, the key store and the client each live in their own namespace on one private
subnet. The stages that talk to the service or the store run on a thread inside the client's
namespace, as the seed's compute instance inside the VNET does. The host has no link into
the network, so the scoring URI cannot be reached from outside.
"""

from aideploy import hookimpl
from aideploy.artifacts import NetworkInfo
from aideploy.errors import ConfigError, StageError
from aideploy.netns import NetworkPermissionError, NetworkToolMissingError, PrivateNetwork
from aideploy.targets import capabilities


@hookimpl
def aideploy_configure_network(cfg, ctx):
    target = capabilities(ctx)
    if not target.runs_here:
        if target.cloud != "azure":
            raise ConfigError(f"network=vnet: target={ctx.cfg.target.plugin} does not say how its service is "
                              "placed in a private network (it declares no cloud and does not run here)",
                              hint="use network=public, or a target that declares it "
                              "(aideploy_target_capabilities)")
        # An Azure target is deployed into the named VNET by Azure; nothing to build here.
        return NetworkInfo(kind="vnet", bind_host="", client_host="",
                           details={"vnet": cfg.vnet_name, "subnet": cfg.subnet_name, "location": cfg.location})
    try:
        net = PrivateNetwork(ctx.run_id, cfg.address_range, cfg.service_ip,
                             hosts={"store": cfg.store_ip, "client": cfg.client_ip})
    except ValueError as exc:
        raise ConfigError(f"network=vnet: {exc}", hint="fix network.address_range or the *_ip settings") from exc
    # Journaled before it exists: a run killed halfway through create() leaves namespaces too.
    ctx.resources.add(f"private network {cfg.address_range}", net.destroy,
                      {"kind": "netns", "prefix": net.name_prefix})
    try:
        net.create()
    except NetworkPermissionError as exc:
        raise ConfigError(str(exc), hint="run as root (or with CAP_NET_ADMIN and CAP_SYS_ADMIN), "
                          "or use network=public") from exc
    except NetworkToolMissingError as exc:
        raise ConfigError(str(exc), hint="install iproute2 (apt-get install iproute2)") from exc
    except RuntimeError as exc:
        raise StageError(f"could not create the private network: {exc}",
                         hint="see the log; `ip netns list` shows leftovers to remove with `ip netns del`") from exc
    client = net.executor("client")

    def in_client_namespace(fn, *args, **kwargs):
        return client.submit(fn, *args, **kwargs).result()

    exec_in = ["ip", "netns", "exec"]
    return NetworkInfo(
        kind="vnet", bind_host=cfg.service_ip, client_host=cfg.service_ip, run_client=in_client_namespace,
        argv_prefix=[*exec_in, net.host("service").netns],
        store_host=cfg.store_ip, store_argv_prefix=[*exec_in, net.host("store").netns],
        details={"range": cfg.address_range, "client": cfg.client_ip, "namespaces": len(net.namespaces)})
