"""The registry of public checkpoints (``checkpoints/registry.toml``) and its cache.

An entry names where a checkpoint comes from, how to verify it (a full sha256, or the
8-hex prefix that OpenMMLab file names carry), its format, the arch and data presets that
reproduce its graph and test protocol, and its published accuracy: ``published`` is the
registry's table as written (top1, top5, protocol, val_videos, denominator, unreadable);
:attr:`Entry.val_videos`, :attr:`Entry.denominator` and :attr:`Entry.unreadable` read it
typed. An entry may carry ``aliases`` (former names): :func:`load_registry` returns a
mapping that resolves them on lookup but lists every entry once, under its canonical name.
"""
from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Dict, Iterable, Optional, Tuple, Union

from harness.checkpoints.io import CheckpointError, sha256_file

try:  # Python 3.11+
    import tomllib
except ImportError:  # pragma: no cover - older Pythons
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_REGISTRY = os.path.join(ROOT, "checkpoints", "registry.toml")
# what a published percentage divides by, and what became of a video that could not be read
DENOMINATORS = ("listed", "scored")
UNREADABLE = ("counted_wrong", "stops_run", "skipped")


@dataclass(frozen=True)
class Entry:
    name: str
    origin: str
    url: str
    filename: str
    format: str
    arch: str
    data_preset: str
    framework_row: str
    published: dict = field(default_factory=dict)
    sha256: str = ""
    sha256_prefix: str = ""
    citation: str = ""
    class_order: str = "alphabetical (mmaction2 label_map_k400.txt)"
    direct_download: bool = True
    aliases: Tuple[str, ...] = ()
    note: str = ""

    @property
    def val_videos(self) -> Optional[int]:
        """The number of validation videos the published numbers were measured on, if stated."""
        value = self.published.get("val_videos")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def denominator(self) -> str:
        """``listed``: the percentages divide by every listed video; ``scored``: by the videos
        that were scored; empty if the entry does not say."""
        return str(self.published.get("denominator", ""))

    @property
    def unreadable(self) -> str:
        """What the authors' run did with an undecodable video: ``counted_wrong``,
        ``stops_run`` or ``skipped``; empty if the entry does not say."""
        return str(self.published.get("unreadable", ""))

    def check_digest(self, digest: str) -> Optional[bool]:
        """True / False when the entry pins a hash, None when it pins none."""
        if self.sha256:
            return digest == self.sha256.lower()
        if self.sha256_prefix:
            return digest.startswith(self.sha256_prefix.lower())
        return None


def registry_path() -> str:
    return os.environ.get("NLPARITY_REGISTRY", DEFAULT_REGISTRY)


def cache_dir() -> str:
    return os.environ.get("NLPARITY_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "nlparity"))


class Registry(dict):
    """Canonical name -> :class:`Entry`; a former name (an alias) also resolves with ``in``,
    ``[]`` and ``get``, but iteration, ``keys``, ``values``, ``items`` and ``len`` see each
    entry once, under its canonical name."""

    def __init__(self, entries: Iterable[Entry] = ()):
        super().__init__((e.name, e) for e in entries)
        self.aliases: Dict[str, str] = {}
        for entry in self.values():
            for alias in entry.aliases:
                if dict.__contains__(self, alias) or alias in self.aliases:
                    raise CheckpointError(f"registry alias {alias!r} of {entry.name} is already a name or an alias")
                self.aliases[alias] = entry.name

    def canonical(self, name: str) -> str:
        """The canonical name for a name or an alias (unknown names come back unchanged)."""
        return name if dict.__contains__(self, name) else self.aliases.get(name, name)

    def __missing__(self, key: str) -> Entry:
        if key in self.aliases:
            return dict.__getitem__(self, self.aliases[key])
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or key in self.aliases

    def get(self, key: str, default=None):
        return self[key] if key in self else default


def _entry(name: str, body: dict, path: str) -> Entry:
    known = set(Entry.__dataclass_fields__)
    fields = {k: v for k, v in body.items() if k in known}
    fields["aliases"] = tuple(fields.get("aliases", ()))
    published = fields.get("published", {})
    if not isinstance(body, dict) or not isinstance(published, dict):
        raise CheckpointError(f"{path}: [{name}] is not a table with a published table")
    for key, allowed in (("denominator", DENOMINATORS), ("unreadable", UNREADABLE)):
        if key in published and published[key] not in allowed:
            raise CheckpointError(f"{path}: [{name}] published.{key} = {published[key]!r}, expected one of {allowed}")
    from harness.checkpoints.formats import FORMATS

    if fields.get("format") not in FORMATS:
        raise CheckpointError(f"{path}: [{name}] format {fields.get('format')!r} is not one of {', '.join(FORMATS)}")
    filename = fields.get("filename")
    # the file lands in the cache under this name: a path would let an entry write anywhere
    if (not isinstance(filename, str) or not filename or filename in (".", "..") or "/" in filename
            or "\\" in filename or os.path.basename(filename) != filename or "\0" in filename):
        raise CheckpointError(f"{path}: [{name}] filename {filename!r} must be a plain file name (no folders)")
    try:
        return Entry(name=name, **fields)
    except TypeError as exc:
        raise CheckpointError(f"{path}: [{name}] is incomplete ({exc})") from None


def load_registry(path: Optional[str] = None) -> Registry:
    path = path or registry_path()
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CheckpointError(f"cannot read the checkpoint registry {path}: {exc}") from None
    return Registry(_entry(name, body, path) for name, body in doc.items())


def cached_path(entry: Entry) -> str:
    return os.path.join(cache_dir(), entry.filename)


def registry_entry(name_or_path: str) -> Optional[Entry]:
    """The registry entry a ``--checkpoint`` argument names (a registry name or alias, not a
    path that exists), or None."""
    if not name_or_path or os.path.exists(name_or_path):
        return None
    registry = load_registry()
    return registry[name_or_path] if name_or_path in registry else None


def resolve(name_or_path: str, verify_digest: bool = True, what: str = "checkpoint") -> str:
    """A path as given, or a registry name's cached file, whose digest is checked against
    the entry (a file put in the cache by hand may be another one); a clear error if neither.
    A path that is a folder or unreadable is named for what it is (``what``: how the
    command calls the argument, e.g. ``--checkpoint`` or ``SRC``)."""
    from harness.files import OutputPathError, check_input_file

    entry = registry_entry(name_or_path)
    if entry is None:
        if os.path.exists(name_or_path):
            try:
                return check_input_file(name_or_path, what)
            except OutputPathError as exc:
                raise CheckpointError(str(exc)) from None
        raise CheckpointError(f"no such checkpoint file or registry name: {name_or_path}")
    path = cached_path(entry)
    if not os.path.isfile(path):
        if entry.direct_download:
            raise CheckpointError(f"{name_or_path} is not in the cache ({path}); "
                                  f"run: python -m harness.checkpoints fetch {name_or_path}")
        raise CheckpointError(f"{name_or_path} is not in the cache: download it by hand from {entry.url} "
                              f"and put it at {path}")
    if verify_digest and entry.check_digest(sha256_file(path)) is False:
        raise CheckpointError(f"{path} is not {entry.name}: its sha256 is not "
                              f"{entry.sha256 or entry.sha256_prefix + '...'}; remove it and fetch it again")
    return path


def fetch(entry: Union[Entry, str], progress: bool = True, timeout: float = 30.0) -> str:
    """Download into the cache with a progress bar, then verify; returns the path.
    ``entry`` may be a registry name or alias."""
    if isinstance(entry, str):
        registry = load_registry()
        if entry not in registry:
            raise CheckpointError(f"unknown registry name {entry!r}; see: python -m harness.checkpoints list")
        entry = registry[entry]
    if not entry.direct_download:
        raise CheckpointError(f"{entry.name} is published on a web page, not as a direct download: "
                              f"open {entry.url} in a browser and put the file at {cached_path(entry)}")
    target = cached_path(entry)
    partial = target + ".part"
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.access(os.path.dirname(target), os.W_OK | os.X_OK):
            raise PermissionError(f"the cache {os.path.dirname(target)} is not writable (set NLPARITY_CACHE)")
    except OSError as exc:
        raise CheckpointError(f"cannot download {entry.name}: {exc.strerror or exc}") from None
    try:
        with urllib.request.urlopen(entry.url, timeout=timeout) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            from tqdm import tqdm

            with tqdm(total=total, unit="B", unit_scale=True, desc=entry.filename, disable=not progress) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if os.path.exists(partial):
            os.remove(partial)
        raise CheckpointError(f"cannot download {entry.name} from {entry.url}: {reason}; download it by hand "
                              f"and put it at {target}") from None
    digest = sha256_file(partial)
    if entry.check_digest(digest) is False:
        os.remove(partial)
        raise CheckpointError(f"{entry.name}: downloaded file has sha256 {digest}, "
                              f"expected {entry.sha256 or entry.sha256_prefix + '...'}; discarded")
    shutil.move(partial, target)
    return target
