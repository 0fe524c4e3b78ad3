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
"""
from __future__ import annotations

import _compat_pickle
import io
import pickle
import types
from typing import Any, Dict, Set, Tuple

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


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose globals are allowlisted objects, refusals or placeholders;
    ``placeholders`` collects the globals that became placeholders."""

    placeholders: Set[str]

    def find_class(self, module, name):
        if not isinstance(module, str) or not isinstance(name, str):
            raise pickle.UnpicklingError("a global whose name is not a string")
        module, name = fix_imports(module, name)
        found = allowed_globals().get((module, name))
        if found is not None:
            shielded = self.__dict__.setdefault("_shielded", {})
            if (module, name) not in shielded:
                shielded[(module, name)] = _shielded(found)
            return shielded[(module, name)]
        if is_refused(module, name):
            raise RefusedGlobal(module, name)
        if not hasattr(self, "placeholders"):
            self.placeholders = set()
        self.placeholders.add(f"{module}.{name}")
        return placeholder_class(f"{module}.{name}")


def pickle_module(unpickler: type = SafeUnpickler) -> Tuple[types.ModuleType, Set[str]]:
    """A module object for ``torch.load(pickle_module=...)`` whose ``Unpickler`` is
    ``unpickler`` (torch subclasses it, overriding only storage names), and the set every
    unpickler it makes adds its placeholder names to."""
    seen: Set[str] = set()

    class _Unpickler(unpickler):
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


def inert_copy(obj, _depth: int = 0):
    """Plain containers of ``obj`` copied with every placeholder replaced by its repr (for
    metadata that is kept and may be printed or saved as JSON)."""
    if _depth > 50:
        return "<nested too deep>"
    if isinstance(obj, Placeholder):
        return repr(obj)
    if isinstance(obj, dict):
        return {inert_copy(k, _depth + 1): inert_copy(v, _depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(inert_copy(v, _depth + 1) for v in obj) if type(obj) in (list, tuple) \
            else [inert_copy(v, _depth + 1) for v in obj]
    return obj
