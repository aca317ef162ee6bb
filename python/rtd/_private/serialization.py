"""Values to bytes and back.

Values are pickled with cloudpickle (protocol 5). Large buffers (numpy arrays,
``PickleBuffer``) go out of band and are laid out next to the pickle, 64-byte aligned,
in one object (the layout is described in ``crates/core-worker/src/layout.rs``). Reading
an object from shared memory slices that layout without copying, so numpy arrays come
back as read-only views into the store.

Pickling records the ObjectRefs found inside a value (``contained``), which the core
worker keeps alive for as long as the value can still be read, and unpickling waits
until the owners of the refs it found count this process as a borrower.
"""

from __future__ import annotations

import io
import marshal
import pickle
import struct
import types

import cloudpickle

from rtd import _core, exceptions

# Object kinds (the metadata of an object); see rtd_common::object_kind.
VALUE = 0
ERROR = 1
WORKER_CRASHED = 2
TASK_CANCELLED = 3
OBJECT_LOST = 4
ACTOR_DIED = 5
UNSCHEDULABLE = 6
RUNTIME_ENV_SETUP_FAILED = 7

_PRIMITIVES = (int, float, str, bytes, bool, type(None))
_ALIGN = 64


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


class _Pickler(cloudpickle.Pickler):
    """cloudpickle, but code objects keep their file name and line numbers.

    cloudpickle 3.1.3 and later replace every pickled function's ``co_filename`` with
    ``<dynamic-code>``, so a remote traceback loses its source lines. All processes of a
    cluster run the same Python version, so ``marshal`` (which keeps every field of a
    code object, nested ones included) carries code objects whole with any cloudpickle.
    """

    def reducer_override(self, obj):
        if type(obj) is types.CodeType:
            return marshal.loads, (marshal.dumps(obj),)
        return super().reducer_override(obj)


def pickle_dumps(value, buffer_callback=None) -> bytes:
    """cloudpickle's ``dumps`` (protocol 5) with code objects kept whole."""
    out = io.BytesIO()
    _Pickler(out, protocol=5, buffer_callback=buffer_callback).dump(value)
    return out.getvalue()


def _pickle(value, buffer_callback=None):
    """``(payload, contained)``: cloudpickle's bytes and the ObjectRefs inside."""
    _core.start_collecting_refs()
    try:
        payload = pickle_dumps(value, buffer_callback=buffer_callback)
    except Exception as e:
        raise TypeError(
            f"Could not serialize an object of type {type(value).__name__}: {e}"
        ) from e
    finally:
        contained = _core.stop_collecting_refs()
    return payload, contained


def dumps(value):
    """``(payload, contained)`` without out-of-band buffers."""
    if type(value) in _PRIMITIVES:
        return pickle.dumps(value, protocol=5), []
    return _pickle(value)


def serialize(value):
    """Returns ``(payload, buffers, contained)`` for ``value``."""
    if type(value) in _PRIMITIVES:
        return pickle.dumps(value, protocol=5), [], []
    buffers = []
    payload, contained = _pickle(value, buffers.append)
    try:
        return payload, [b.raw() for b in buffers], contained
    except BufferError:
        # A non-contiguous buffer cannot go out of band; pickle it in band.
        payload, contained = dumps(value)
        return payload, [], contained


def loads(payload, buffers=()):
    """Unpickles, then waits until the owners of the refs inside count us as borrower."""
    value = pickle.loads(payload, buffers=buffers)
    _core.flush_borrows()
    return value


def _unpack(data):
    view = memoryview(data)
    n, _, payload_len = struct.unpack_from("<IIQ", view, 0)
    lens = struct.unpack_from(f"<{n}Q", view, 16) if n else ()
    off = _align(16 + 8 * n)
    payload = view[off : off + payload_len]
    off += payload_len
    buffers = []
    for length in lens:
        off = _align(off)
        buffers.append(view[off : off + length])
        off += length
    return payload, buffers


def deserialize(metadata: int, data):
    """The value of an object; error objects come back as exception instances
    (see ``is_error``)."""
    if metadata == VALUE or metadata == ERROR:
        payload, buffers = _unpack(data)
        return loads(payload, buffers)
    message = bytes(data).decode("utf-8", "replace")
    if metadata == WORKER_CRASHED:
        return exceptions.WorkerCrashedError(message)
    if metadata == TASK_CANCELLED:
        return exceptions.TaskCancelledError(message)
    if metadata == OBJECT_LOST:
        return exceptions.ObjectLostError(message)
    if metadata == ACTOR_DIED:
        return exceptions.ActorDiedError(message)
    if metadata == UNSCHEDULABLE:
        return exceptions.TaskUnschedulableError(message)
    if metadata == RUNTIME_ENV_SETUP_FAILED:
        return exceptions.RuntimeEnvSetupError(message)
    return exceptions.RaySystemError(f"object of unknown kind {metadata}: {message}")


def is_error(metadata: int) -> bool:
    return metadata != VALUE


def raise_error(error: BaseException):
    if isinstance(error, exceptions.RayTaskError):
        raise error.as_instanceof_cause()
    raise error


def pack_args(args, kwargs, extra=None):
    """Pickles call arguments with top-level ObjectRefs replaced by ``ArgRef``
    placeholders; returns ``(blob, refs, contained)``. The worker resolves ``refs`` to
    values; ``contained`` are the refs nested deeper, which arrive as refs.
    ``extra`` (actor creation: the actor's configuration) rides along."""
    from rtd._core import ObjectRef

    refs = []
    if any(type(a) is ObjectRef for a in args):
        packed = []
        for a in args:
            if type(a) is ObjectRef:
                packed.append(ArgRef(len(refs)))
                refs.append(a)
            else:
                packed.append(a)
        args = tuple(packed)
    if kwargs and any(type(v) is ObjectRef for v in kwargs.values()):
        packed_kwargs = {}
        for k, v in kwargs.items():
            if type(v) is ObjectRef:
                packed_kwargs[k] = ArgRef(len(refs))
                refs.append(v)
            else:
                packed_kwargs[k] = v
        kwargs = packed_kwargs
    call = (args, kwargs) if extra is None else (args, kwargs, extra)
    blob, contained = dumps(call)
    return blob, refs, contained


class ArgRef:
    """Stands for the i-th top-level ObjectRef argument inside the pickled arguments;
    the worker puts the resolved value in its place."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index

    def __reduce__(self):
        return (ArgRef, (self.index,))
