"""Application metrics, as Ray's ``ray.util.metrics``: values recorded in drivers, tasks
and actors are exported by the node the process runs on, at its ``/metrics`` endpoint
(prefixed ``ray_``, as Ray exports them).

    requests = Counter("requests", description="Requests served", tag_keys=("route",))
    requests.inc(tags={"route": "/a"})
    latency = Histogram("latency_s", boundaries=[0.01, 0.1, 1.0]).set_default_tags({})
    latency.observe(0.05)
    Gauge("queue_size").set(7)

Recording is cheap: values are folded in the process and reach the node about once a
second (and when the process disconnects). Before ``rtd.init()`` they are dropped.
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Dict, List, Optional, Tuple, Union

from rtd import _core

# Prometheus's metric name syntax, as Ray checks it.
_VALID_METRIC_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
# Prometheus's label name syntax (names starting with ``__`` are reserved).
_VALID_TAG_KEY_RE = re.compile(r"^(?!__)[a-zA-Z_][a-zA-Z0-9_]*$")


class Metric:
    """What Counter, Gauge and Histogram share: a name, a description, tag keys and
    default tags. A metric with an invalid name is discarded with a warning, as Ray
    does; bad tags raise."""

    _kind = ""

    def __init__(self, name: str, description: str = "", tag_keys: Optional[Tuple[str, ...]] = None):
        if len(name) == 0:
            raise ValueError("Empty name is not allowed. Please provide a metric name.")
        self._discard_metric = not _VALID_METRIC_NAME_RE.match(name)
        if self._discard_metric:
            warnings.warn(
                f"Invalid metric name: {name}. Metric will be discarded and data will not be collected "
                "or published. Metric names can only contain letters, numbers, _, and :. "
                "Metric names cannot start with numbers.",
                UserWarning,
                stacklevel=3,
            )
        self._name = name
        self._description = description
        self._default_tags: Dict[str, str] = {}
        self._tag_keys: Tuple[str, ...] = tag_keys or tuple()
        if not isinstance(self._tag_keys, tuple):
            raise TypeError(f"tag_keys should be a tuple type, got: {type(self._tag_keys)}")
        for key in self._tag_keys:
            if not isinstance(key, str):
                raise TypeError(f"Tag keys must be str, got {type(key)}.")
            if not _VALID_TAG_KEY_RE.match(key):
                raise ValueError(
                    f"Invalid tag key: {key!r}. Tag keys can only contain letters, numbers and _, "
                    "and cannot start with a number or __."
                )
        self._metric: Optional[_core.UserMetric] = None

    def _define(self, boundaries: List[float]) -> None:
        if not self._discard_metric:
            self._metric = _core.UserMetric(self._name, self._description, self._kind, boundaries)

    def set_default_tags(self, default_tags: Dict[str, str]) -> "Metric":
        """Sets tags used by every record call that does not name them; returns the metric."""
        for key, val in default_tags.items():
            if key not in self._tag_keys:
                raise ValueError(f"Unrecognized tag key {key}.")
            if not isinstance(val, str):
                raise TypeError(f"Tag values must be str, got {type(val)}.")
        self._default_tags = default_tags
        return self

    def _record(self, value: Union[int, float], tags: Optional[Dict[str, str]] = None) -> None:
        if self._metric is None:
            return
        final_tags = self._get_final_tags(tags)
        self._validate_tags(final_tags)
        _core.record_metric(self._metric, final_tags, float(value))

    def _get_final_tags(self, tags: Optional[Dict[str, str]]) -> Dict[str, str]:
        if not tags:
            return self._default_tags
        for val in tags.values():
            if not isinstance(val, str):
                raise TypeError(f"Tag values must be str, got {type(val)}.")
        return {**self._default_tags, **tags}

    def _validate_tags(self, final_tags: Dict[str, str]) -> None:
        missing_tags = [key for key in self._tag_keys if key not in final_tags]
        if missing_tags:
            raise ValueError(f"Missing value for tag key(s): {','.join(missing_tags)}.")
        unknown = [key for key in final_tags if key not in self._tag_keys]
        if unknown:
            raise ValueError(f"Unrecognized tag key(s): {','.join(unknown)}.")

    @property
    def info(self) -> Dict[str, Any]:
        """The metric's name, description, tag keys and default tags."""
        return {
            "name": self._name,
            "description": self._description,
            "tag_keys": self._tag_keys,
            "default_tags": self._default_tags,
        }


def _check_number(value: Any) -> None:
    if not isinstance(value, (int, float)):
        raise TypeError(f"value must be int or float, got {type(value)}.")


class Counter(Metric):
    """A cumulative metric that only increases (Prometheus's counter, exported as
    ``ray_<name>_total``); the node sums what its processes count."""

    _kind = "counter"

    def __init__(self, name: str, description: str = "", tag_keys: Optional[Tuple[str, ...]] = None):
        super().__init__(name, description, tag_keys)
        self._define([])

    def __reduce__(self):
        return self.__class__, (self._name, self._description, self._tag_keys)

    def inc(self, value: Union[int, float] = 1.0, tags: Optional[Dict[str, str]] = None) -> None:
        """Increments the counter by ``value`` (default 1) for ``tags``."""
        _check_number(value)
        if value <= 0:
            raise ValueError(f"value must be >0, got {value}")
        self._record(value, tags)


class Gauge(Metric):
    """The value set last (Prometheus's gauge), whichever process of the node set it."""

    _kind = "gauge"

    def __init__(self, name: str, description: str = "", tag_keys: Optional[Tuple[str, ...]] = None):
        super().__init__(name, description, tag_keys)
        self._define([])

    def __reduce__(self):
        return self.__class__, (self._name, self._description, self._tag_keys)

    def set(self, value: Optional[Union[int, float]], tags: Optional[Dict[str, str]] = None) -> None:
        """Sets the gauge to ``value`` for ``tags``; ``None`` does nothing."""
        if value is None:
            return
        _check_number(value)
        self._record(value, tags)


class Histogram(Metric):
    """Counts observed values in buckets bounded by ``boundaries`` (Prometheus's
    histogram: ``ray_<name>_bucket``, ``_sum`` and ``_count``)."""

    _kind = "histogram"

    def __init__(
        self,
        name: str,
        description: str = "",
        boundaries: Optional[List[float]] = None,
        tag_keys: Optional[Tuple[str, ...]] = None,
    ):
        super().__init__(name, description, tag_keys)
        if boundaries is None or len(boundaries) == 0:
            raise ValueError(
                "boundaries argument should be provided when using the Histogram class. "
                'e.g., Histogram("name", boundaries=[1.0, 2.0])'
            )
        for i, boundary in enumerate(boundaries):
            if boundary <= 0:
                raise ValueError(
                    f"Invalid `boundaries` argument at index {i}, {boundaries}. Use positive values for the arguments."
                )
        if any(b >= a for b, a in zip(boundaries, boundaries[1:])):
            raise ValueError(f"Invalid `boundaries` argument {boundaries}. Boundaries must increase.")
        self.boundaries = boundaries
        self._define([float(b) for b in boundaries])

    def __reduce__(self):
        return self.__class__, (self._name, self._description, self.boundaries, self._tag_keys)

    def observe(self, value: Union[int, float], tags: Optional[Dict[str, str]] = None) -> None:
        """Adds ``value`` to the bucket it falls in, for ``tags``."""
        _check_number(value)
        self._record(value, tags)

    @property
    def info(self) -> Dict[str, Any]:
        """As ``Metric.info``, with the boundaries."""
        info = super().info
        info.update({"boundaries": self.boundaries})
        return info


__all__ = ["Counter", "Gauge", "Histogram"]
