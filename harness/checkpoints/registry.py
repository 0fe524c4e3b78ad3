"""The registry of public checkpoints (``checkpoints/registry.toml``) and its cache.

An entry names where a checkpoint comes from, how to verify it (a full sha256, or the
8-hex prefix that OpenMMLab file names carry), its format, the arch and data presets that
reproduce its graph and test protocol, and its published accuracy.
"""
from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Dict, Optional

from harness.checkpoints.io import CheckpointError, sha256_file

try:  # Python 3.11+
    import tomllib
except ImportError:  # pragma: no cover - older Pythons
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_REGISTRY = os.path.join(ROOT, "checkpoints", "registry.toml")


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


def load_registry(path: Optional[str] = None) -> Dict[str, Entry]:
    path = path or registry_path()
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CheckpointError(f"cannot read the checkpoint registry {path}: {exc}") from None
    known = set(Entry.__dataclass_fields__)
    return {name: Entry(name=name, **{k: v for k, v in body.items() if k in known})
            for name, body in doc.items()}


def cached_path(entry: Entry) -> str:
    return os.path.join(cache_dir(), entry.filename)


def resolve(name_or_path: str) -> str:
    """A path as given, or a registry name's cached file; a clear error if neither."""
    if os.path.exists(name_or_path):
        return name_or_path
    registry = load_registry()
    if name_or_path in registry:
        path = cached_path(registry[name_or_path])
        if os.path.isfile(path):
            return path
        raise CheckpointError(f"{name_or_path} is not in the cache ({path}); "
                              f"run: python -m harness.checkpoints fetch {name_or_path}")
    raise CheckpointError(f"no such checkpoint file or registry name: {name_or_path}")


def fetch(entry: Entry, progress: bool = True, timeout: float = 30.0) -> str:
    """Download into the cache with a progress bar, then verify; returns the path."""
    if not entry.direct_download:
        raise CheckpointError(f"{entry.name} is published on a web page, not as a direct download: "
                              f"open {entry.url} in a browser and put the file at {cached_path(entry)}")
    target = cached_path(entry)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    partial = target + ".part"
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
        raise CheckpointError(f"cannot download {entry.name} from {entry.url}: {reason}") from None
    digest = sha256_file(partial)
    if entry.check_digest(digest) is False:
        os.remove(partial)
        raise CheckpointError(f"{entry.name}: downloaded file has sha256 {digest}, "
                              f"expected {entry.sha256 or entry.sha256_prefix + '...'}; discarded")
    shutil.move(partial, target)
    return target
