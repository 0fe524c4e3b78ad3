"""Unpickling a checkpoint without running code from it.

A pickle is a program: ``GLOBAL`` fetches any importable object and ``REDUCE`` calls it, so
``pickle.load`` of a crafted file runs a command. Checkpoints are pickles too (a torch
``.pth`` holds ``data.pkl``; Caffe2 ``.pkl`` files are plain pickles), and real ones carry
more than tensors: mmengine's runner saves ``meta``, ``message_hub`` (``HistoryBuffer``
objects whose ``statistics_methods`` are pickled as ``getattr(HistoryBuffer, "min")``),
``optimizer`` and ``param_schedulers`` beside ``state_dict``.

:class:`SafeUnpickler` decides what every global of the stream becomes, in three ways:

* allowed (:func:`allowed_globals`, exact ``module, name`` pairs): torch's tensor rebuild
  functions (``torch._utils._rebuild_tensor``, ``_v2``, ``_v3``, ``_rebuild_parameter``),
  torch dtypes, ``torch.Size``, ``torch.device``; numpy's ``_reconstruct``, ``scalar``,
  ``ndarray``, ``dtype``; ``collections.OrderedDict`` and ``Counter``; ``builtins.set``,
  ``frozenset``, ``bytearray``, ``complex``; ``_codecs.encode`` (how protocol 2 writes
  bytes). Each is safe to call with any arguments: it builds data and calls nothing it is
  given. Python-level ones are handed out as fresh wrappers, so that the stream cannot set
  attributes on objects the process shares.
* refused (:func:`is_refused`): globals whose only use in a checkpoint is to run code or
  reach things that do (``os``, ``posix``, ``subprocess``, ``sys``, ``builtins.eval``/``exec``/
  ``__import__``/``open``..., ``importlib``, ``runpy``, ``pickle``, ``marshal``, ``ctypes``,
  ``torch.hub``, ``torch.jit``, ``torch.load`` ...): loading stops with
  :class:`RefusedGlobal` naming it.
* anything else becomes an inert :class:`Placeholder` subclass named after the global. It
  accepts any arguments, state, items and calls and only records them: calling it
  (``REDUCE``) returns another placeholder, so e.g. mmengine's ``getattr(HistoryBuffer,
  "min")`` is a placeholder made from two placeholders, and nothing from the file is ever
  imported or executed. Placeholders have no ``__getattr__``, are not iterable and are
  not tensors: an allowlisted function handed one fails with a ``TypeError`` /
  ``AttributeError``, and the readers refuse any placeholder found where a tensor belongs.

Refusal is only for a clear message; safety does not depend on the refused list being
complete, since an unknown global is never the real object.

Sizes are bounded before anything is allocated (:class:`PickleTooLarge`, one line): a tiny
stream may not make the reader allocate gigabytes. The allowlisted constructors that take a
size (``bytearray(n)``, ``numpy.ndarray(shape)``, ``_reconstruct``) may not build more bytes
than the stream holds (:data:`SLACK` aside); a torch storage may not declare more bytes than
its record in the zip holds (its size is known from the zip directory before reading); a
tensor may not span more elements than its storage has; and :func:`inert_copy`, which turns
shared references into copies, stops at :data:`MAX_META_NODES` objects (a stream of nested
lists that share one child expands to 10^9 objects from 2 KB).
"""
from __future__ import annotations

import _compat_pickle
import io
import pickle
import types
from typing import Any, Dict, Optional, Set, Tuple

REFUSED_MODULES = frozenset({
    "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "_posixsubprocess", "sys", "shutil",
    "importlib", "imp", "runpy", "pty", "socket", "ctypes", "pickle", "_pickle", "cPickle", "marshal",
    "code", "codeop", "webbrowser", "multiprocessing", "pdb", "bdb", "timeit", "platform", "commands",
    "popen2", "pydoc", "asyncio", "signal", "io", "_io", "tempfile", "zipimport", "pkgutil", "site",
    "ensurepip", "venv", "doctest", "trace", "cProfile", "profile", "threading", "_thread", "operator",
    "_operator", "inspect", "types", "gc", "ast", "dill", "cloudpickle", "joblib", "yaml", "IPython",
    "torch.hub", "torch.jit", "torch.package", "torch.serialization", "torch.utils.cpp_extension",
    "torch.multiprocessing", "torch.distributed", "torch._dynamo", "torch.ops", "torch.library",
    "numpy.testing", "numpy.f2py", "numpy.distutils", "numpy.lib.npyio", "numpy.ctypeslib",
    "setuptools", "distutils", "pip",
})
REFUSED_BUILTINS = frozenset({
    "eval", "exec", "execfile", "compile", "__import__", "open", "file", "breakpoint", "input",
    "raw_input", "exit", "quit", "globals", "locals", "vars", "setattr", "delattr", "help", "reload",
    "apply", "memoryview", "__loader__", "__spec__", "__build_class__",
})

REFUSAL_ADVICE = "a checkpoint may not run code; pass --trust-checkpoint if you trust this file"
TRUST_HELP = ("unpickle the weights file fully. DANGER: a pickle (.pth, .pkl, an .npz object array) can run "
              "arbitrary code when it is loaded; use only for files you trust. Default: read tensors and "
              "plain data only, leave unknown classes as inert placeholders, and refuse (exit 2) a file that "
              "would run code")


# bytes an allowlisted constructor may build beyond the stream's own length (a legitimate
# bytearray or array carries its content in the stream)
SLACK = 1 << 16
# objects inert_copy makes of a file's metadata: mmengine's meta and message hub hold a few
# thousand; past this, shared references are expanding a small stream into a huge copy
MAX_META_NODES = 1_000_000


def _human(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


class PickleTooLarge(pickle.UnpicklingError):
    """The stream declares more data than the file holds: refused before it is allocated."""


class RefusedGlobal(pickle.UnpicklingError):
    """The stream names a global that only serves to run code."""

    def __init__(self, module: str, name: str):
        super().__init__(f"refusing to unpickle {module}.{name}")
        self.module, self.name = module, name


def is_refused(module: str, name: str) -> bool:
    if module == "builtins":
        return name in REFUSED_BUILTINS or name.startswith("_")
    parts = module.split(".")
    return any(".".join(parts[:i]) in REFUSED_MODULES for i in range(1, len(parts) + 1))


def _allowed() -> Dict[Tuple[str, str], Any]:
    import collections

    import numpy as np

    allowed: Dict[Tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("collections", "Counter"): collections.Counter,
        ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
        ("builtins", "bytearray"): bytearray, ("builtins", "complex"): complex,
        ("_codecs", "encode"): __import__("_codecs").encode,
        ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
    }
    reconstruct, scalar = np.ndarray((0,)).__reduce__()[0], np.float64(0).__reduce__()[0]
    for core in ("numpy.core.multiarray", "numpy._core.multiarray"):   # numpy 1.x, 2.x
        allowed[(core, "_reconstruct")] = reconstruct
        allowed[(core, "scalar")] = scalar
    try:
        import torch
    except ImportError:
        return allowed
    for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter"):
        if hasattr(torch._utils, name):
            allowed[("torch._utils", name)] = getattr(torch._utils, name)
    allowed[("torch", "Size")] = torch.Size
    allowed[("torch", "device")] = torch.device
    for name in dir(torch):
        value = getattr(torch, name, None)
        if isinstance(value, torch.dtype):
            allowed[("torch", name)] = value
    return allowed


def _count(shape) -> int:
    """The element count of a shape from a stream (an int or a sequence of ints), or -1."""
    try:
        dims = [int(shape)] if isinstance(shape, int) else [int(d) for d in shape]
    except (TypeError, ValueError):
        return -1
    if any(d < 0 for d in dims):
        return -1
    total = 1
    for d in dims:
        total *= d
    return total


def _itemsize(dtype) -> int:
    import numpy as np

    try:
        return max(1, np.dtype(dtype if dtype is not None else float).itemsize)
    except (TypeError, ValueError):
        return 1


def _too_large(what: str, declared: int, budget: int) -> PickleTooLarge:
    return PickleTooLarge(f"the pickle declares {what} of {_human(declared)}, more than its "
                          f"{_human(max(0, budget - SLACK))} of data could hold")


def bounded_global(module: str, name: str, real, budget: int):
    """A wrapper of an allowlisted constructor that refuses to build more than ``budget``
    bytes; ``real`` itself where it takes no size."""
    if (module, name) == ("builtins", "bytearray"):
        def build_bytearray(*args):
            if args and isinstance(args[0], int) and args[0] > budget:
                raise _too_large("a bytearray", args[0], budget)
            return bytearray(*args)
        return build_bytearray
    if (module, name) == ("numpy", "ndarray"):
        return _BoundedNdarray(real, budget)
    if name == "_reconstruct":
        def reconstruct(subtype, shape, dtype, *args):
            if isinstance(subtype, _BoundedNdarray):   # the stream's numpy.ndarray global
                subtype = subtype.real
            if _count(shape) * 8 > budget:
                raise _too_large("an array", _count(shape) * 8, budget)
            return real(subtype, shape, dtype, *args)
        return reconstruct
    if module == "torch._utils" and name.startswith("_rebuild_tensor"):
        def rebuild(storage, storage_offset, size, stride, *args, **kwargs):
            _check_tensor_fits(storage, storage_offset, size)
            return real(storage, storage_offset, size, stride, *args, **kwargs)
        return rebuild
    return real


class _BoundedNdarray:
    """``numpy.ndarray`` as a stream's global: calling it (REDUCE) builds no more than the
    budget; ``_reconstruct`` given it builds the real type. Slots: BUILD cannot change it."""

    __slots__ = ("real", "budget")

    def __init__(self, real, budget: int):
        self.real, self.budget = real, budget

    def __call__(self, shape=(), dtype=float, *args, **kwargs):
        n = _count(shape)
        if n < 0 or n * _itemsize(dtype) > self.budget:
            raise _too_large("an array", max(n, 0) * _itemsize(dtype), self.budget)
        return self.real(shape, dtype, *args, **kwargs)


def _check_tensor_fits(storage, offset, size) -> None:
    """A tensor may not have more elements than its storage past ``offset`` (an overlapping,
    expanded view is how a 16-byte storage becomes a 4 GB array once copied)."""
    length = getattr(storage, "_size", None)
    try:
        available = int(length()) if callable(length) else -1
    except Exception:  # noqa: BLE001 - not a storage: torch's own rebuild refuses it
        return
    n = _count(size)
    if available >= 0 and (n < 0 or (n > 0 and n > available - int(offset or 0))):
        raise PickleTooLarge(f"the pickle declares a tensor of {n if n >= 0 else size} elements on a storage of "
                             f"{available} elements past offset {offset}")


_ALLOWED_CACHE: Dict[Tuple[str, str], Any] = {}


def allowed_globals() -> Dict[Tuple[str, str], Any]:
    """The allowlist, ``{(module, name): object}`` (built on first use)."""
    if not _ALLOWED_CACHE:
        _ALLOWED_CACHE.update(_allowed())
    return _ALLOWED_CACHE


def _shielded(obj):
    """``obj``, or a fresh function calling it where ``obj`` is a Python-level function or
    class: pickle's BUILD can set attributes on whatever a global resolves to, and must not
    reach objects this process shares (``torch._utils._rebuild_tensor_v2.__defaults__``,
    ``collections.Counter``'s methods)."""
    heap_type = isinstance(obj, type) and obj.__flags__ & (1 << 9)   # Py_TPFLAGS_HEAPTYPE
    if not (heap_type or isinstance(obj, types.FunctionType)):
        return obj                      # C functions, static types and dtypes take no attributes

    def call(*args, **kwargs):
        return obj(*args, **kwargs)

    return call


class Placeholder:
    """An object of a class the stream named but that was not imported: it keeps what the
    stream gave it (constructor arguments, state, items) and does nothing else."""

    _global = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        object.__setattr__(obj, "_args", args)
        object.__setattr__(obj, "_kwargs", kwargs)
        object.__setattr__(obj, "_state", None)
        object.__setattr__(obj, "_items", {})
        object.__setattr__(obj, "_list", [])
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):          # BUILD
        object.__setattr__(self, "_state", state)

    def __setitem__(self, key, value):      # SETITEM(S)
        self._items[key] = value

    def append(self, value):                # APPEND(S)
        self._list.append(value)

    def extend(self, values):
        self._list.extend(list(values) if isinstance(values, (list, tuple)) else [])

    def __call__(self, *args, **kwargs):    # REDUCE with a placeholder as the callable
        return placeholder_class(self._global + "()")(*args, **kwargs)

    def __repr__(self):
        return f"<unpickled {self._global} (not imported)>"


_PLACEHOLDERS: Dict[str, type] = {}


def placeholder_class(qualified: str) -> type:
    cls = _PLACEHOLDERS.get(qualified)
    if cls is None:
        cls = type(qualified.rsplit(".", 1)[-1] or "Placeholder", (Placeholder,), {"_global": qualified,
                                                                                   "__module__": __name__})
        _PLACEHOLDERS[qualified] = cls
    return cls


def fix_imports(module: str, name: str) -> Tuple[str, str]:
    """Python 2 names, as ``pickle.Unpickler.find_class`` maps them (``__builtin__`` ...)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


_BASE_PERSISTENT_LOAD = pickle.Unpickler.__dict__["persistent_load"]   # the C unpickler's slot


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose globals are allowlisted objects, refusals or placeholders;
    ``placeholders`` collects the globals that became placeholders. ``budget`` (bytes, default
    the stream's remaining length) bounds what the allowlisted constructors build;
    ``records`` (``{key: bytes}``, a torch zip's storages by their ``data/<key>`` name) bounds
    what a storage may declare: a persistent_load function assigned to the unpickler (as
    ``torch.load`` assigns one) is wrapped so that it sees only ids that fit."""

    placeholders: Set[str]
    budget: int = -1
    records: Optional[Dict[str, int]] = None

    def __init__(self, file, *args, budget: Optional[int] = None, records: Optional[Dict[str, int]] = None,
                 **kwargs):
        super().__init__(file, *args, **kwargs)
        if budget is None:
            budget = _remaining(file)
        self.budget = budget + SLACK if budget >= 0 else -1
        self.records = records

    @property
    def persistent_load(self):
        return _BASE_PERSISTENT_LOAD.__get__(self)

    @persistent_load.setter
    def persistent_load(self, func):
        records = self.records

        def bounded(saved_id):
            if records is not None:
                _check_storage_id(saved_id, records)
            return func(saved_id)

        _BASE_PERSISTENT_LOAD.__set__(self, bounded)

    def find_class(self, module, name):
        if not isinstance(module, str) or not isinstance(name, str):
            raise pickle.UnpicklingError("a global whose name is not a string")
        module, name = fix_imports(module, name)
        found = allowed_globals().get((module, name))
        if found is not None:
            shielded = self.__dict__.setdefault("_shielded", {})
            if (module, name) not in shielded:
                real = _shielded(found)
                shielded[(module, name)] = bounded_global(module, name, real, self.budget) if self.budget >= 0 else real
            return shielded[(module, name)]
        if is_refused(module, name):
            raise RefusedGlobal(module, name)
        if not hasattr(self, "placeholders"):
            self.placeholders = set()
        self.placeholders.add(f"{module}.{name}")
        return placeholder_class(f"{module}.{name}")


def _remaining(file) -> int:
    """Bytes left in a seekable stream, or -1."""
    try:
        here = file.tell()
        end = file.seek(0, 2)
        file.seek(here)
        return end - here
    except (AttributeError, OSError, ValueError):
        return -1


def _check_storage_id(saved_id, records: Dict[str, int]) -> None:
    """torch's persistent id ``("storage", type, key, location, numel)``: the bytes it
    declares must be the bytes its record holds (torch would allocate them first)."""
    if not (isinstance(saved_id, tuple) and len(saved_id) == 5):
        return   # torch refuses it itself
    storage_type, key, numel = saved_id[1], str(saved_id[2]), saved_id[4]
    dtype = getattr(storage_type, "dtype", None)
    try:
        import torch

        size = 1 if dtype is None or storage_type is torch.UntypedStorage else torch._utils._element_size(dtype)
    except Exception:  # noqa: BLE001
        size = 1
    if not isinstance(numel, int) or numel < 0:
        raise PickleTooLarge(f"the pickle declares a storage data/{key} of {numel!r} elements")
    held = records.get(key)
    if held is None:
        raise PickleTooLarge(f"the pickle names a storage data/{key} that the file does not hold")
    if numel * size != held:
        raise PickleTooLarge(f"the pickle declares a storage data/{key} of {_human(numel * size)}, "
                             f"but the file holds {_human(held)} for it")


def pickle_module(unpickler: type = SafeUnpickler, records: Optional[Dict[str, int]] = None
                  ) -> Tuple[types.ModuleType, Set[str]]:
    """A module object for ``torch.load(pickle_module=...)`` whose ``Unpickler`` is
    ``unpickler`` (torch subclasses it, overriding only storage names), and the set every
    unpickler it makes adds its placeholder names to. ``records``: the sizes of the zip's
    storage records by key (see :class:`SafeUnpickler`)."""
    seen: Set[str] = set()

    class _Unpickler(unpickler):
        def __init__(self, file, *args, **kwargs):
            super().__init__(file, *args, records=records, **kwargs)

        def find_class(self, module, name):
            self.placeholders = seen
            return super().find_class(module, name)

    def load(file, **kwargs):
        return _Unpickler(file, **kwargs).load()

    def loads(data, **kwargs):
        return load(io.BytesIO(data), **kwargs)

    module = types.ModuleType("nlparity_safe_pickle")
    module.Unpickler = _Unpickler
    module.load, module.loads = load, loads
    module.UnpicklingError = pickle.UnpicklingError
    module.__version__ = "1"
    return module, seen


def inert_copy(obj, _depth: int = 0, _budget: Optional[list] = None):
    """Plain containers of ``obj`` copied with every placeholder replaced by its repr (for
    metadata that is kept and may be printed or saved as JSON). Raises :class:`PickleTooLarge`
    past :data:`MAX_META_NODES` objects: shared references would otherwise expand a few
    kilobytes of stream into gigabytes of copies."""
    budget = [MAX_META_NODES] if _budget is None else _budget
    budget[0] -= 1
    if budget[0] < 0:
        raise PickleTooLarge(f"the pickle's metadata expands to more than {MAX_META_NODES:,} objects "
                             "(shared references copied over and over)")
    if _depth > 50:
        return "<nested too deep>"
    if isinstance(obj, Placeholder):
        return repr(obj)
    if isinstance(obj, dict):
        return {inert_copy(k, _depth + 1, budget): inert_copy(v, _depth + 1, budget) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(inert_copy(v, _depth + 1, budget) for v in obj) if type(obj) in (list, tuple) \
            else [inert_copy(v, _depth + 1, budget) for v in obj]
    return obj
