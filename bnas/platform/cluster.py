"""The Ray cluster a study runs on: joining or starting it, and what each trial may ask of it.

``connect`` joins the cluster at ``--address`` (checked to answer first: ``ray.init`` would otherwise
retry for long) or starts a local one that ends with the study (:func:`disconnect`). Trial resources
come from ``ray.cluster_resources()``: a GPU per trial only where the cluster has GPUs, and a request
the cluster can never meet is an error, not a trial that waits forever (Ray 2.60 never places it).
:func:`probe_resources` reads the same figures before anything starts (``--check`` and the preflight of
a real run), from Ray's own node detection or from the cluster's GCS, without joining it.

A local cluster listens on loopback only: node IP, GCS, raylet, object manager, dashboard and its
agent, runtime-env agent and every worker (:func:`_loopback_only`). Ray 2.60 turns a node IP of
127.0.0.1 into the machine's address unless it runs as a single-machine cluster, and then binds its
servers to all interfaces; a single-machine study needs no port that other machines reach. Reaching
other interfaces is what ``ray start`` on a real cluster is for, which the user does on purpose.
Token authentication (Ray's default) stays on either way.

Without ``--ray-logs`` (``verbose`` off) a local cluster's start says nothing of its own: Ray's
"Token authentication is enabled for this Ray cluster ..." line is dropped (the study's own "Ray
dashboard:" line says token authentication is on), and so is the ANSI reset (``ESC[0m``) that the
colorama Ray loads writes to a terminal at exit (:func:`_no_colour_reset_at_exit`).
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnas.errors import ConfigError
from bnas.platform.study import StudySpec

#: Workers import ``bnas`` from the checkout (Ray ships it as the job's code search path).
REPO_ROOT = Path(__file__).resolve().parents[2]

#: Ray's switch for multi-machine clusters (default on for Linux). Off, Ray takes 127.0.0.1 as the node
#: IP (``ray._private.services.get_node_ip_address``) and its servers bind to it alone.
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOOPBACK = "127.0.0.1"

#: A Ray cluster that outlives a study, listening on 127.0.0.1 alone (GCS, raylet, dashboard, agents,
#: workers): a single-machine cluster, which :func:`connect` joins as one. Without the variable Ray
#: 2.60 binds them to all interfaces, whatever ``--node-ip-address`` says.
KEEP_CLUSTER_COMMAND = (
    f"{SINGLE_MACHINE_ENV}=0 ray start --head --node-ip-address {LOOPBACK} --dashboard-host {LOOPBACK}"
)


@dataclass
class ClusterInfo:
    address: str
    dashboard_url: str | None
    token_auth: bool
    resources: dict[str, float]
    started_here: bool


@dataclass
class TrialPlan:
    """Per-trial resources as Ray sees them, and the device/threads the trial's torch uses."""

    resources: dict[str, float]
    device: str
    threads: int


def check_address(address: str, timeout_s: float = 5.0) -> None:
    """An explicit ``host:port`` must accept connections (``ray.init`` would otherwise retry for long)."""
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(
            f"{address!r} is not host:port (e.g. 127.0.0.1:6379), auto or ray://host:port", key="--address"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise ConfigError(
            f"no Ray cluster answers at {address} ({e}); start one with `ray start --head --port {port}` "
            f"or leave --address out to start a local cluster",
            key="--address",
        ) from None


#: The logger and the start of the line Ray 2.60 logs (a warning) when ``ray.init`` starts a cluster
#: with ``RAY_AUTH_MODE`` unset (``authentication_token_setup._warn_token_auth_enabled``).
TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
TOKEN_AUTH_NOTICE = "Token authentication is enabled for this Ray cluster"


class _DropTokenNotice(logging.Filter):
    """Drops Ray's token-authentication notice, and nothing else (a disabled-auth warning passes)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(TOKEN_AUTH_NOTICE)


@contextlib.contextmanager
def _quiet_token_notice(quiet: bool) -> Iterator[None]:
    """While ``ray.init`` runs: without Ray's token notice when ``quiet``."""
    if not quiet:
        yield
        return
    logger, dropper = logging.getLogger(TOKEN_AUTH_LOGGER), _DropTokenNotice()
    logger.addFilter(dropper)
    try:
        yield
    finally:
        logger.removeFilter(dropper)


def _no_colour_reset_at_exit() -> None:
    """Keep the colorama that ``ray.init`` initialises (``ray.autoscaler._private.cli_logger`` calls
    ``colorama.init(strip=False)``) from writing ``ESC[0m`` to a terminal when the process exits.

    Its exit hook resets colours that only Ray's own coloured output sets, so it is taken off where
    that output is off. ``atexit_done`` stays True so that a later ``colorama.init`` in this process
    does not register it again. Does nothing where colorama is not loaded or has moved.
    """
    module = sys.modules.get("colorama.initialise")
    reset_all = getattr(module, "reset_all", None)
    if module is None or reset_all is None or not getattr(module, "atexit_done", False):
        return
    atexit.unregister(reset_all)
    module.atexit_done = True


#: What :func:`_loopback_only` changed, for :func:`disconnect` to put back.
_saved: list[tuple[str | None, bool]] = []


def _loopback_only() -> None:
    """Make the local cluster about to start a single-machine one, bound to 127.0.0.1.

    The environment variable reaches the processes Ray starts (GCS, raylet, agents, workers); Ray's
    driver read it at import, so its constant is set as well where Ray is already imported.
    """
    from ray._private import ray_constants

    _saved.append((os.environ.get(SINGLE_MACHINE_ENV), ray_constants.ENABLE_RAY_CLUSTER))
    os.environ[SINGLE_MACHINE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def _restore() -> None:
    """Undo :func:`_loopback_only` (a later ``connect`` in this process may join a real cluster)."""
    if not _saved:
        return
    from ray._private import ray_constants

    env, constant = _saved.pop()
    _saved.clear()
    if env is None:
        os.environ.pop(SINGLE_MACHINE_ENV, None)
    else:
        os.environ[SINGLE_MACHINE_ENV] = env
    ray_constants.ENABLE_RAY_CLUSTER = constant


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (``::ffff:127.0.0.1``)."""
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return host == "localhost"
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def connect(address: str | None, dashboard: bool, verbose: bool) -> ClusterInfo:
    """Join the cluster at ``address`` or start a local one on loopback; workers can import ``bnas``."""
    import ray
    from ray.job_config import JobConfig

    single_machine = not address
    if address:
        check_address(address)
        single_machine = _single_machine_cluster(address)
    if single_machine:
        _loopback_only()
    job = JobConfig(code_search_path=[str(REPO_ROOT)])
    try:
        # "local" always starts a new cluster: a plain ray.init() would join the last `ray start` one.
        with _quiet_token_notice(not verbose):
            ctx = ray.init(
                address=address or "local",
                include_dashboard=dashboard if not address else None,
                dashboard_host=LOOPBACK,
                _node_ip_address=LOOPBACK if single_machine else None,
                job_config=job,
                log_to_driver=verbose,
                configure_logging=verbose,
                logging_level="warning",
                ignore_reinit_error=True,
            )
    except (ConnectionError, RuntimeError) as e:
        _restore()
        auth = (
            " If the cluster uses token authentication, make its token available (~/.ray/auth_token or "
            "RAY_AUTH_TOKEN) with RAY_AUTH_MODE=token."
            if address
            else ""
        )
        raise ConfigError(
            f"could not connect to the Ray cluster at {address or 'a new local cluster'}: {e}.{auth}",
            key="--address",
        ) from None
    finally:
        if not verbose:
            _no_colour_reset_at_exit()
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled

        token_auth = bool(is_token_auth_enabled())
    except ImportError:  # the check moved: say nothing rather than something wrong
        token_auth = False
    url = getattr(ctx, "dashboard_url", None) or None
    node_ip = getattr(ctx, "address_info", {}).get("node_ip_address")
    if not address and node_ip and not is_loopback(node_ip):  # Ray changed how it picks the node IP
        disconnect()
        raise RuntimeError(f"the local Ray cluster took node IP {node_ip}, not {LOOPBACK}; stopped it")
    return ClusterInfo(
        address=getattr(ctx, "address_info", {}).get("gcs_address", address or "local"),
        dashboard_url=f"http://{url}" if url and "://" not in url else url,
        token_auth=token_auth,
        resources=dict(ray.cluster_resources()),
        started_here=not address,
    )


def disconnect() -> None:
    """Stop a cluster started here; only disconnect from an existing one."""
    import ray

    ray.shutdown()
    _restore()


def _single_machine_cluster(address: str, timeout_s: float = 10.0) -> bool:
    """True where ``address`` is a loopback ``host:port`` and every live node of that cluster registered
    a loopback IP: a single-machine cluster (``ray start --node-ip-address 127.0.0.1`` with
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, what the study summary prints). A driver joins it only as a
    single-machine driver too: otherwise Ray swaps 127.0.0.1 for the machine's address, where such a
    cluster does not listen."""
    host = address.rpartition(":")[0].strip("[]")
    if not host or not is_loopback(host):
        return False
    try:
        from ray._raylet import GcsClient
    except ImportError:  # Ray's GCS client moved: join as before
        return False
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            nodes = GcsClient(address=address).get_all_node_info(timeout=timeout_s).values()
            ips = [n.node_manager_address for n in nodes if n.state == 0]  # GcsNodeInfo.ALIVE
        except Exception:  # noqa: BLE001  (cannot ask: join as before; ray.init reports what is wrong)
            return False
        if ips or time.monotonic() > deadline:  # a head just started registers its node a moment later
            return bool(ips) and all(is_loopback(ip) for ip in ips)
        time.sleep(0.5)


def probe_resources(address: str | None, timeout_s: float = 10.0) -> dict[str, float] | None:
    """The resources the cluster of a run would have, read without starting or joining one.

    A local cluster: what Ray detects on this machine (its own detection: cgroup CPU limits,
    ``CUDA_VISIBLE_DEVICES``). ``--address host:port``: the sum over the cluster's live nodes, from its
    GCS (no driver connects). ``auto`` and ``ray://`` addresses are resolved only by connecting:
    None, and the run checks after connecting.
    """
    if not address:
        return _local_resources()
    if address in ("auto", "local") or address.startswith("ray://"):
        return None
    check_address(address)
    try:
        from ray._raylet import GcsClient
    except ImportError:  # Ray's GCS client moved: the run checks after connecting
        return None
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            nodes = GcsClient(address=address).get_all_node_info(timeout=timeout_s).values()
        except Exception as e:  # noqa: BLE001  (auth, timeout and RPC errors all mean: cannot ask)
            raise ConfigError(
                f"the Ray cluster at {address} does not answer its GCS ({str(e).splitlines()[0]}). If it "
                "uses token authentication, make its token available (~/.ray/auth_token or RAY_AUTH_TOKEN) "
                "with RAY_AUTH_MODE=token.",
                key="--address",
            ) from None
        total: dict[str, float] = {}
        for node in nodes:
            if node.state != 0:  # GcsNodeInfo.ALIVE
                continue
            for name, amount in node.resources_total.items():
                total[name] = total.get(name, 0.0) + float(amount)
        if total.get("CPU", 0.0) > 0:
            return total
        # A node that has just started is in the GCS before its raylet reports its resources (seen as
        # "the cluster has 0 CPUs" right after `ray start`): ask again, then leave it to the run.
        if time.monotonic() > deadline:
            return None
        time.sleep(0.5)


def _local_resources() -> dict[str, float]:
    """CPUs and GPUs of a local Ray node on this machine, as Ray would detect them."""
    try:
        from ray._private.resource_and_label_spec import ResourceAndLabelSpec

        spec: Any = ResourceAndLabelSpec().resolve(is_head=True, node_ip_address=LOOPBACK)
        return {
            "CPU": float(spec.num_cpus),
            "GPU": float(spec.num_gpus or 0),
            "memory": float(spec.memory or 0),
        }
    except (ImportError, AttributeError, TypeError):  # Ray's detection moved: the same figures here
        import torch

        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return {"CPU": float(cpus or 1), "GPU": float(torch.cuda.device_count())}


def check_cluster(spec: StudySpec, address: str | None, num_classes: int | None = None) -> TrialPlan | None:
    """What a run checks once connected (:func:`plan_trials`), before anything starts, and, given the
    dataset's ``num_classes``, whether one search trial fits the cluster's memory
    (:func:`check_memory`); None where the cluster can be known only by joining it."""
    resources = probe_resources(address)
    if resources is None:
        return None
    plan = plan_trials(spec, resources)
    if num_classes is not None:
        check_memory(spec, resources, plan, num_classes, local=not address)
    return plan


def check_memory(
    spec: StudySpec, resources: dict[str, float], plan: TrialPlan, num_classes: int, local: bool
) -> None:
    """Refuse a study whose search step cannot fit: at every probe point of the space, the memory of
    one super-network step (:func:`bnas.memory.search_memory`, a lower bound) against the memory Ray
    gives tasks on the cluster (its ``memory`` resource) or, for GPU trials on this machine, the GPU's
    memory. The message carries the estimate and the settings that set it."""
    from bnas.memory import search_memory

    if plan.device == "cuda":
        import torch

        if not (local and torch.cuda.is_available()):
            return  # another machine's GPU: its memory is not known here
        limit, where = float(torch.cuda.get_device_properties(0).total_memory), "the GPU's memory"
    else:
        limit, where = float(resources.get("memory", 0.0)), "the memory Ray gives tasks on this cluster"
    if limit <= 0:
        return
    seen: set[tuple] = set()
    for point in spec.space.probe_points():
        cfg = spec.trial_config(point)
        sc = cfg.search
        # What sets the memory (the binarization method barely does: one pass for all methods).
        shape = (sc.batch_size, cfg.data.image_size, sc.init_channels, sc.layers, sc.sampling_k, sc.nodes)
        shape += (tuple(sc.candidate_ops()), cfg.network_layout())
        if shape in seen:
            continue
        seen.add(shape)
        try:
            estimate = search_memory(cfg, num_classes)
        except (RuntimeError, NotImplementedError, TypeError, ValueError):  # an op without meta support
            return  # (a user's own operation): the estimate is a guard, not a requirement
        if estimate.total > limit:
            what = f"with {point}: " if point else ""
            raise ConfigError(
                f"{what}one search step needs at least {estimate.describe()} at search.batch_size="
                f"{sc.batch_size}, data.image_size={cfg.data.image_size}, search.init_channels="
                f"{sc.init_channels}, search.layers={sc.layers}, search.sampling_k={sc.sampling_k}, more "
                f"than {where} ({limit / 2**30:.1f} GiB); lower the batch size, image size, channels "
                "or cells, or raise sampling_k",
                spec.source,
                "space",
            )


def plan_trials(spec: StudySpec, cluster: dict[str, float]) -> TrialPlan:
    """Per-trial CPU/GPU from the study and what the cluster has; impossible requests raise."""
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    want = spec.resources
    gpu = (1.0 if gpus >= 1 else 0.0) if want.gpu == "auto" else float(want.gpu)
    problems: list[tuple[str, str]] = []  # every resource problem at once: one fix, one rerun
    if gpu > 0 and gpus == 0:
        problems.append(
            (
                "resources.gpu",
                f"asks for {gpu:g} GPU per trial but the Ray cluster has no GPU (it has {cpus:g} CPUs); "
                "use resources.gpu: auto or 0 (or --set resources.gpu=0)",
            )
        )
    elif gpu > gpus:
        problems.append(("resources.gpu", f"asks for {gpu:g} GPUs per trial but the cluster has {gpus:g}"))
    if want.cpu > cpus:
        problems.append(
            (
                "resources.cpu",
                f"asks for {want.cpu:g} CPUs per trial but the cluster has {cpus:g}; a trial would wait "
                f"forever (--set resources.cpu={max(1, int(cpus))})",
            )
        )
    if problems:
        raise ConfigError.collect(problems, spec.source)
    resources = {"cpu": want.cpu, "gpu": gpu}
    return TrialPlan(resources, "cuda" if gpu > 0 else "cpu", max(1, int(want.cpu)))
