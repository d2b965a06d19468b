"""The torch.distributed rendezvous of a run's Ray Train workers: on loopback for a local cluster.

Ray Train sets up the process group with rank 0's node address and a free port, and torch's
``TCPStore`` server (rank 0) listens on that port on every interface (``*:<port>``), whatever the
address. A local cluster (node address 127.0.0.1, :mod:`platform.core.loopback`) should not be
reachable from the network, so :class:`RendezvousConfig` (the run's ``torch_config``) hands rank 0's
store a socket bound to 127.0.0.1 (``TCPStore(master_listen_fd=...)``) and keeps gloo / NCCL on the
loopback interface. On a cluster of machines (a node address other than loopback) nothing changes:
Ray Train's own set-up, the node address.
"""
from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import psutil
import ray
import torch.distributed as dist
from ray.train._internal.worker_group import WorkerGroup as V1WorkerGroup
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend

LOOPBACK = "127.0.0.1"
# the interface variables of gloo and NCCL: set to the loopback interface for a local run (unless set)
INTERFACE_ENV = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
_LISTENER: socket.socket | None = None     # rank 0's bound socket, until its TCPStore takes it


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def loopback_interface() -> str | None:
    """The name of the interface that holds 127.0.0.1 (``lo`` on Linux, ``lo0`` on macOS), or None."""
    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == LOOPBACK for a in addresses):
            return name
    return None


def listen_on_loopback() -> int:
    """On rank 0: bind a listening socket to 127.0.0.1 on a free port; its store takes it. Returns the port."""
    global _LISTENER
    if _LISTENER is not None:
        _LISTENER.close()
    _LISTENER = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    _LISTENER.bind((LOOPBACK, 0))
    _LISTENER.listen(128)
    return _LISTENER.getsockname()[1]


def setup_loopback_process_group(backend: str, world_rank: int, world_size: int, port: int, timeout_s: int) -> None:
    """One worker joins the process group through rank 0's store on 127.0.0.1:``port``."""
    global _LISTENER
    interface = loopback_interface()
    for name in INTERFACE_ENV:
        if interface and not os.environ.get(name):
            os.environ[name] = interface
    os.environ.update(MASTER_ADDR=LOOPBACK, MASTER_PORT=str(port))
    if backend == "nccl":   # as Ray Train does: a timed-out collective fails instead of hanging
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    timeout = timedelta(seconds=timeout_s)
    if world_rank == 0:
        if _LISTENER is None:
            raise RuntimeError("the rendezvous socket of rank 0 is gone (its worker restarted?)")
        # the store owns the socket from here: detached, or Python closes it under the store when the
        # socket object goes (then no rank can connect and the rendezvous waits out its timeout)
        fd, _LISTENER = _LISTENER.detach(), None
        store = dist.TCPStore(LOOPBACK, port, world_size, True, timeout, wait_for_workers=False, master_listen_fd=fd)
    else:
        store = dist.TCPStore(LOOPBACK, port, world_size, False, timeout)
    dist.init_process_group(backend=backend, store=store, rank=world_rank, world_size=world_size, timeout=timeout)


class LoopbackTorchBackend(_TorchBackend):
    """Ray Train's torch backend, with the rendezvous on 127.0.0.1 when rank 0's node address is loopback."""

    def on_start(self, worker_group, backend_config: TorchConfig):
        address = worker_group.execute_single(0, ray.util.get_node_ip_address)
        if not is_loopback(address) or not dist.is_available():
            return super().on_start(worker_group, backend_config)   # a cluster of machines: the node address
        backend = backend_config.backend
        if backend is None:
            backend = "nccl" if worker_group.get_resources_per_worker().get("GPU", 0) > 0 else "gloo"
        port = worker_group.execute_single(0, listen_on_loopback)
        if not isinstance(worker_group, V1WorkerGroup):   # Ray Train V2: LOCAL_RANK and friends first
            worker_group.execute(_set_torch_distributed_env_vars)
        ray.get([worker_group.execute_single_async(i, setup_loopback_process_group, backend=backend, world_rank=i,
                                                   world_size=len(worker_group), port=port,
                                                   timeout_s=backend_config.timeout_s)
                 for i in range(len(worker_group))])


@dataclass
class RendezvousConfig(TorchConfig):
    """``TorchConfig`` whose process group meets on 127.0.0.1 on a local cluster (see the module docstring)."""

    @property
    def backend_cls(self):
        return LoopbackTorchBackend
