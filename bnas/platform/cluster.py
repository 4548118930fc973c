"""The Ray cluster a study runs on: joining or starting it, and what each trial may ask of it.

``connect`` joins the cluster at ``--address`` (checked to answer first: ``ray.init`` would otherwise
retry for long) or starts a local one that ends with the study (:func:`disconnect`). Trial resources
come from ``ray.cluster_resources()``: a GPU per trial only where the cluster has GPUs, and a request
the cluster can never meet is an error, not a trial that waits forever (Ray 2.60 never places it).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from bnas.errors import ConfigError
from bnas.platform.study import StudySpec

#: Workers import ``bnas`` from the checkout (Ray ships it as the job's code search path).
REPO_ROOT = Path(__file__).resolve().parents[2]


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


def connect(address: str | None, dashboard: bool, verbose: bool) -> ClusterInfo:
    """Join the cluster at ``address`` or start a local one; workers can import ``bnas``."""
    import ray
    from ray.job_config import JobConfig

    if address:
        check_address(address)
    job = JobConfig(code_search_path=[str(REPO_ROOT)])
    try:
        # "local" always starts a new cluster: a plain ray.init() would join the last `ray start` one.
        ctx = ray.init(
            address=address or "local",
            include_dashboard=dashboard if not address else None,
            dashboard_host="127.0.0.1",
            job_config=job,
            log_to_driver=verbose,
            configure_logging=verbose,
            logging_level="warning",
            ignore_reinit_error=True,
        )
    except (ConnectionError, RuntimeError) as e:
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
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled

        token_auth = bool(is_token_auth_enabled())
    except ImportError:  # the check moved: say nothing rather than something wrong
        token_auth = False
    url = getattr(ctx, "dashboard_url", None) or None
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


def plan_trials(spec: StudySpec, cluster: dict[str, float]) -> TrialPlan:
    """Per-trial CPU/GPU from the study and what the cluster has; impossible requests raise."""
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    want = spec.resources
    gpu = (1.0 if gpus >= 1 else 0.0) if want.gpu == "auto" else float(want.gpu)
    if gpu > 0 and gpus == 0:
        raise ConfigError(
            f"asks for {gpu:g} GPU per trial but the Ray cluster has no GPU (it has "
            f"{cpus:g} CPUs); use resources.gpu: auto or 0 (or --set resources.gpu=0)",
            spec.source,
            "resources.gpu",
        )
    if gpu > gpus:
        raise ConfigError(
            f"asks for {gpu:g} GPUs per trial but the cluster has {gpus:g}", spec.source, "resources.gpu"
        )
    if want.cpu > cpus:
        raise ConfigError(
            f"asks for {want.cpu:g} CPUs per trial but the cluster has {cpus:g}; a trial would wait forever",
            spec.source,
            "resources.cpu",
        )
    resources = {"cpu": want.cpu, "gpu": gpu}
    return TrialPlan(resources, "cuda" if gpu > 0 else "cpu", max(1, int(want.cpu)))
