"""``faceprint serve --ray``: deploy the application on Ray Serve and keep it up until interrupted."""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from faceprint.scale.settings import RaySettings
from faceprint.service.settings import Settings

log = logging.getLogger("faceprint.scale")


def faceprint_env() -> dict[str, str]:
    """The ``FACEPRINT_*`` variables of this process, for replicas on a cluster that did not inherit them."""
    return {k: v for k, v in os.environ.items() if k.startswith("FACEPRINT_")}


def deploy(settings: Settings, ray_settings: RaySettings, *, host: str, port: int) -> Any:
    """Start (or join) Ray, start Serve's HTTP proxy on ``host:port`` and run the faceprint application.

    Returns once every replica is up (the ingress has loaded its gallery, the model replicas their
    networks); the returned handle is the ingress deployment's.
    """
    import ray
    from ray import serve

    from faceprint.scale.ray_app import build_app

    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
        if ray_settings.address:
            # A running cluster did not start from this shell: hand its replicas our FACEPRINT_* settings
            # (gallery path, key, cache directory). A local instance inherits this process's environment.
            kwargs["runtime_env"] = {"env_vars": faceprint_env()}
        elif ray_settings.num_cpus is not None:
            kwargs["num_cpus"] = ray_settings.num_cpus
        ray.init(address=ray_settings.address, **kwargs)
    serve.start(http_options={"host": host, "port": port})
    return serve.run(build_app(settings, ray_settings), name=ray_settings.app_name, route_prefix="/")


def undeploy(ray_settings: RaySettings, *, shutdown_ray: bool) -> None:
    """Delete the application; with ``shutdown_ray`` also stop Serve and the Ray instance this process runs."""
    import ray
    from ray import serve

    try:
        serve.delete(ray_settings.app_name)
    finally:
        if shutdown_ray:
            serve.shutdown()
            ray.shutdown()


def serve_forever(settings: Settings, ray_settings: RaySettings, *, host: str, port: int) -> None:
    """Deploy, wait for SIGINT/SIGTERM, undeploy. A Ray instance started here is shut down with it; a
    cluster joined with ``--address`` keeps running (only this application is deleted)."""
    import ray

    stop = threading.Event()
    previous: dict[int, Any] = {}
    try:
        deploy(settings, ray_settings, host=host, port=port)
        # Installed after ray.init, which sets handlers of its own: ours must be the ones that run.
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        log.warning("faceprint: Ray Serve application %r is up on http://%s:%d/", ray_settings.app_name, host, port)
        while not stop.wait(1.0):
            pass
    finally:
        if ray.is_initialized():
            undeploy(ray_settings, shutdown_ray=ray_settings.address is None)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
