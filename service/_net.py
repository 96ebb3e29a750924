"""Moved to :mod:`service._platform`; this module re-exports the network helpers only for
``service/serving/edge.py`` and ``service/serving/_overhead.py``, which the structure change does
not edit. Import from ``service._platform``; delete this file once serving does.
"""

from service._platform import free_port, metric_sum, wait_ready

__all__ = ["free_port", "metric_sum", "wait_ready"]
