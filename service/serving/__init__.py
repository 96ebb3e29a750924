"""Ray Serve application: a FastAPI router in front of a dense and a pruned deployment.

Public surface: the configuration models, the pure routing policy, and the application builder.
Deployments, schemas and metrics are importable from their modules but are not promised API.
"""

from service.serving.config import LimitsConfig, RouterConfig, RoutingConfig, ServingConfig, VariantConfig, Weights
from service.serving.policy import Route, choose, fallback, sticky_bucket

__all__ = [
    "LimitsConfig",
    "Route",
    "RouterConfig",
    "RoutingConfig",
    "ServingConfig",
    "VariantConfig",
    "Weights",
    "build_app",
    "choose",
    "fallback",
    "sticky_bucket",
]


def __getattr__(name: str):
    # build_app imports Ray; keep `import service.serving` (policy, config) light for unit tests.
    if name == "build_app":
        from service.serving.app import build_app

        return build_app
    raise AttributeError(name)
