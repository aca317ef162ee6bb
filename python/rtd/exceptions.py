"""Ray's exception classes, under Ray's names, so existing ``except`` clauses work."""

from __future__ import annotations


class RayError(Exception):
    """Base of every rtd error."""


class RaySystemError(RayError):
    """The runtime itself failed (a daemon is gone, a protocol error)."""


class RayTaskError(RayError):
    """A task raised. At ``get`` the raised object is also an instance of the user's
    exception class (``as_instanceof_cause``), with the remote traceback in its text."""

    def __init__(self, function_name, traceback_str, cause, pid=None):
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.pid = pid
        super().__init__(function_name, traceback_str, cause, pid)

    def __str__(self):
        return (
            f"{type(self.cause).__name__}: ray::{self.function_name}() "
            f"(pid={self.pid})\n{self.traceback_str}"
        )

    def as_instanceof_cause(self):
        """This error as an instance of both RayTaskError and the cause's class."""
        cause_cls = type(self.cause)
        if issubclass(RayTaskError, cause_cls) or isinstance(self.cause, RayTaskError):
            return self
        message = str(self)
        try:
            cls = _dual_classes.get(cause_cls)
            if cls is None:

                class cls(RayTaskError, cause_cls):  # type: ignore[misc, valid-type]
                    def __init__(self, cause):
                        self.cause = cause
                        self.args = (cause,)

                    def __getattr__(self, name):
                        return getattr(self.cause, name)

                    def __str__(self):
                        return self._message

                cls.__name__ = f"RayTaskError({cause_cls.__name__})"
                cls.__qualname__ = cls.__name__
                _dual_classes[cause_cls] = cls
            dual = cls(self.cause)
        except TypeError:
            # Some classes (e.g. with incompatible layouts) cannot be combined.
            return self
        dual._message = message
        dual.function_name = self.function_name
        dual.traceback_str = self.traceback_str
        dual.pid = self.pid
        return dual

    def __reduce__(self):
        return (RayTaskError, (self.function_name, self.traceback_str, self.cause, self.pid))


_dual_classes: dict = {}


class TaskCancelledError(RayError):
    """The task was cancelled with ``rtd.cancel``."""


class WorkerCrashedError(RayError):
    """The worker running the task died and retries ran out."""


class ObjectLostError(RayError):
    """The object's value is gone and cannot be rebuilt."""


class OwnerDiedError(ObjectLostError):
    """The process that owned the object died."""


class ObjectStoreFullError(RayError):
    """The object store cannot hold the object even after spilling."""


class GetTimeoutError(RayError, TimeoutError):
    """``get`` timed out."""


class RayActorError(RayError):
    """The actor died."""


class ActorDiedError(RayActorError):
    """The actor died (``RayActorError`` with its cause)."""


class TaskUnschedulableError(RayError):
    """No node can ever run the task under its scheduling strategy."""


class RuntimeEnvSetupError(RayError):
    """A task's or actor's runtime_env could not be set up on its node (a pip package
    that does not exist, a missing package); the message is the installer's."""


class ActorUnschedulableError(RayError):
    """No node can ever host the actor under its scheduling strategy."""


class AuthenticationError(RayError):
    """A peer refused this process's auth token, or it has none where the cluster needs
    one (``RTD_AUTH_MODE=token``); the message says how to set it."""


__all__ = [
    "AuthenticationError",
    "RayError",
    "RaySystemError",
    "RuntimeEnvSetupError",
    "RayTaskError",
    "TaskCancelledError",
    "WorkerCrashedError",
    "ObjectLostError",
    "OwnerDiedError",
    "ObjectStoreFullError",
    "GetTimeoutError",
    "RayActorError",
    "ActorDiedError",
    "TaskUnschedulableError",
    "ActorUnschedulableError",
]
