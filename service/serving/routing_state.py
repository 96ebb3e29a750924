"""One routing state per application, shared by every ingress replica.

Weights and the shadow fraction change two ways: ``serve deploy`` with a new ``user_config``, and
``PUT /admin/routing``. With several ingress replicas each must apply both, and a replica that
restarts must come back with what is in force, not with the deploy's original config. So the
state lives in one small detached actor per application (``twinserve-routing-<app>``), which every
replica reads on its health period and writes through the admin endpoint:

* a ``user_config`` that differs from the last one deployed is a new deploy: it replaces the state;
* the same ``user_config`` again (a replica starting or restarting) leaves an admin change in force;
* an admin change replaces the state at once on the replica that took it, and on the others
  within one period.

Every change bumps ``version``; replicas apply a state only when its version is newer than theirs.
"""

from __future__ import annotations

import ray

__all__ = ["RoutingState", "routing_state"]


@ray.remote(num_cpus=0)
class RoutingState:
    def __init__(self) -> None:
        self.version = 0
        self.routing: dict | None = None
        self.deployed: dict | None = None
        self.source = "none"

    def deploy(self, user_config: dict) -> tuple[int, dict, str]:
        """A replica's ``user_config``: a new one replaces the state, a known one changes nothing."""
        if user_config != self.deployed:
            self.deployed, self.routing, self.source = user_config, user_config, "serve deploy (user_config)"
            self.version += 1
        return self.version, self.routing, self.source

    def set(self, routing: dict, source: str) -> tuple[int, dict, str]:
        self.routing, self.source = routing, source
        self.version += 1
        return self.version, self.routing, self.source

    def get(self) -> tuple[int, dict | None, str]:
        return self.version, self.routing, self.source


def routing_state(app: str):
    """The application's state actor, created by whichever replica asks first.

    Detached, so that it outlives the replica that created it (an owned actor would die with it);
    it goes with the Ray cluster, and a new application of the same name starts from its deploy.
    """
    return RoutingState.options(name=f"twinserve-routing-{app}", namespace="twinserve", lifetime="detached",
                                get_if_exists=True).remote()
