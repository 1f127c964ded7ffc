"""The same ASGI app as a Ray Serve deployment (``meltok-rt serve --ray [ADDRESS] --replicas N``).

Each replica builds ``app.create_app(config)`` when it starts (``serve.ingress`` with a builder), so
each holds its own codec and batchers; Ray Serve's HTTP proxy routes requests and WebSockets to them.
Batching happens inside a replica, not across replicas.
"""
from __future__ import annotations

import signal
import threading

from meltok_runtime.optional import import_optional
from meltok_runtime.serve.app import ServeConfig, create_app

INSTALL = "pip install -e '.[serve,serve-ray]'"
APP_NAME = "meltok"


def deployment(config: ServeConfig, *, replicas: int = 1, num_cpus: float = 1.0):
    """A bound Ray Serve application of ``replicas`` replicas, each serving ``config``."""
    serve = import_optional("ray.serve", install=INSTALL, purpose="meltok-rt serve --ray")

    def build():
        return create_app(config)

    @serve.deployment(name="MeltokCodec", num_replicas=replicas, ray_actor_options={"num_cpus": num_cpus})
    @serve.ingress(build)
    class MeltokCodec:
        """One replica: the app of ``config`` with its own codec."""

    return MeltokCodec.bind()


def start(config: ServeConfig, *, replicas: int = 1, host: str = "127.0.0.1", port: int = 8000,
          num_cpus: float = 1.0) -> None:
    """Deploy on the Ray instance this process is connected to (``ray.init`` first); returns once deployed."""
    serve = import_optional("ray.serve", install=INSTALL, purpose="meltok-rt serve --ray")
    serve.start(http_options={"host": host, "port": port})
    serve.run(deployment(config, replicas=replicas, num_cpus=num_cpus), name=APP_NAME, route_prefix="/")


def run_ray(config: ServeConfig, *, address: str = "local", replicas: int = 1, host: str = "127.0.0.1",
            port: int = 8000) -> None:
    """Connect to Ray (``local``: start one here), deploy, and serve until SIGTERM or Ctrl-C; then shut down."""
    ray = import_optional("ray", install=INSTALL, purpose="meltok-rt serve --ray")
    serve = import_optional("ray.serve", install=INSTALL, purpose="meltok-rt serve --ray")
    ray.init(address=None if address == "local" else address)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        start(config, replicas=replicas, host=host, port=port)
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
