"""Which files a dataset was made from: paths, sizes and (for the built-in datasets) sha256 digests.

    sources = describe_sources(train_set)  # [{'kind': 'idx-images', 'path': ..., 'bytes': ..., 'sha256': ...}, ...]

The built-in datasets hash their files once, while loading them (``ArrayImageDataset.sources``); folders read by
timm or torchvision are described by their root, number of files and total bytes, without hashing.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

__all__ = ["Source", "describe_sources", "file_source", "folder_source"]

Source = dict[str, str | int | None]  # one file or folder a dataset was read from; YAML-serialisable
_MAX_WRAPPERS = 64  # depth guard for `.dataset` chains


def file_source(path: str, kind: str, data: bytes | None = None, **extra: str | int | None) -> Source:
    """``file_source(path, kind, data=None, **extra)``: the record of one file read: absolute path, byte size,
    sha256 of ``data`` (the bytes already read from ``path``; read here when None) and ``extra`` keys."""
    if data is None:
        with open(path, "rb") as f:
            data = f.read()
    record: Source = {"kind": kind, "path": os.path.abspath(path), "bytes": len(data), "files": 1,
                      "sha256": hashlib.sha256(data).hexdigest()}
    record.update(extra)
    return record


def _walk_files(root: str) -> Iterator[str]:
    if os.path.isfile(root):
        yield root
        return
    for folder, _, names in os.walk(root):
        for name in names:
            yield os.path.join(folder, name)


def folder_source(root: str, kind: str, files: list[str] | None = None, **extra: str | int | None) -> Source:
    """``folder_source(root, kind, files=None, **extra)``: the record of a folder (or one archive): its absolute
    path, the number and total size of ``files`` (every file under ``root`` when None), and ``'sha256': None``."""
    paths = list(_walk_files(root)) if files is None else files
    total = sum(os.path.getsize(p) for p in paths if os.path.isfile(p))
    record: Source = {"kind": kind, "path": os.path.abspath(root), "bytes": total, "files": len(paths),
                      "sha256": None, "note": "not hashed: counts and sizes only"}
    record.update(extra)
    return record


def _base_datasets(dataset: Any) -> Iterator[Any]:
    """The datasets under the wrappers: follows ``.dataset`` (Subset and timm-lap's subsets) and ``.datasets``
    (ConcatDataset)."""
    for _ in range(_MAX_WRAPPERS):
        if isinstance(getattr(dataset, "sources", None), list):
            break
        parts = getattr(dataset, "datasets", None)
        if isinstance(parts, (list, tuple)):
            for part in parts:
                yield from _base_datasets(part)
            return
        inner = getattr(dataset, "dataset", None)
        if inner is None or inner is dataset:
            break
        dataset = inner
    yield dataset


def _reader_files(reader: Any) -> list[str] | None:
    """The image files a timm folder reader or torchvision ``ImageFolder`` lists (``samples``), else None."""
    samples = getattr(reader, "samples", None)
    if not isinstance(samples, (list, tuple)) or not samples:
        return None
    paths = [s[0] if isinstance(s, (list, tuple)) else s for s in samples]
    return paths if all(isinstance(p, str) for p in paths) and os.path.isfile(paths[0]) else None


def _describe_one(dataset: Any) -> list[Source]:
    sources = getattr(dataset, "sources", None)
    if isinstance(sources, list):
        return [dict(s) for s in sources]
    kind = type(dataset).__name__
    reader = getattr(dataset, "reader", None)
    root = getattr(reader, "root", None) or getattr(dataset, "root", None)
    if isinstance(root, str) and root and os.path.exists(root):
        files = _reader_files(reader if reader is not None else dataset)  # timm's reader or torchvision's samples
        return [folder_source(root, f"timm-{kind}" if reader is not None else f"torchvision-{kind}", files,
                              reader=type(reader).__name__ if reader is not None else None)]
    return [{"kind": kind, "path": root if isinstance(root, str) else None, "bytes": None, "files": None,
             "sha256": None, "note": "no files found to describe"}]


def describe_sources(dataset: Any) -> list[Source]:
    """``describe_sources(dataset) -> list[dict]``: the files and folders ``dataset`` was read from, seen through
    ``Subset``-style wrappers; each a plain dict with ``kind``, ``path``, ``bytes``, ``files``, ``sha256`` (None
    where not hashed) and kind-specific keys. Duplicates (a base reached twice) are listed once."""
    out: list[Source] = []
    for base in _base_datasets(dataset):
        for record in _describe_one(base):
            if record not in out:
                out.append(record)
    return out
