"""Decoding product images once into the catalog's image store, streaming.

Real datasets hold up to hundreds of thousands of JPEGs; decoded at 224×224 they do not fit in
memory (Amazon Men: 110k × 150 KB = 16.6 GB). :func:`write_images` decodes and resizes them in
chunks on a thread pool (Pillow releases the GIL while decoding and resampling) and appends each
usable image to a ``.npy`` memmap, so memory stays at a few chunks whatever the dataset size.

A missing, corrupt or truncated image is never fatal: it is counted, logged and reported in the
returned :class:`ImageReport`; the caller excludes its item. Usable images are stored contiguously
in source order (a bad image leaves no gap), so the row of an item is its rank among the usable
ones, and the file is shrunk to the number of usable images at the end.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

#: An image source: raw encoded bytes, a file to read, or ``None`` when the item has no image.
Source = bytes | Path | None

#: Images decoded per chunk and thread: bounds memory to ``chunk × threads`` decoded images.
CHUNK_PER_THREAD = 32

#: Environment variable that sets the number of decoding threads (default: CPUs, at most 8).
WORKERS_ENV = "AIPRAY_DATA_WORKERS"


class BadImageError(ValueError):
    """An item's image is missing or cannot be decoded."""


@dataclass
class ImageReport:
    """What :func:`write_images` found: which sources gave an image, and why the others did not.

    Attributes:
        ok: ``[n_sources]`` bool, True where the image was decoded and stored.
        missing: number of sources without an image (no bytes, no file).
        corrupt: number of sources whose image could not be decoded (corrupt, truncated, ...).
        examples: a few ``(source index, reason)`` of bad images, for the log and the summary.
    """

    ok: np.ndarray
    missing: int = 0
    corrupt: int = 0
    examples: list[tuple[int, str]] = field(default_factory=list)

    @property
    def n_ok(self) -> int:
        """Number of usable images (rows of the image file)."""
        return int(self.ok.sum())


def default_workers() -> int:
    """Decoding threads: ``$AIPRAY_DATA_WORKERS`` if set, else the CPUs (at most 8)."""
    env = os.environ.get(WORKERS_ENV)
    if env:
        return max(1, int(env))
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def decode_image(source: Source, size: int) -> np.ndarray:
    """Decode one image to ``[3, size, size]`` uint8 RGB (bicubic resize, aspect not kept).

    Raises:
        BadImageError: the source is missing or not a complete, decodable image.
    """
    if source is None:
        raise BadImageError("missing: no image")
    if isinstance(source, Path):
        try:
            data = source.read_bytes()
        except FileNotFoundError:
            raise BadImageError(f"missing: no file {source.name}") from None
    else:
        data = bytes(source)
    if not data:
        raise BadImageError("corrupt: empty image")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # raises on truncated data
            rgb = img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    except MemoryError:
        raise
    except Exception as exc:  # any decoding failure of one image is that image's problem
        raise BadImageError(f"corrupt: {type(exc).__name__}: {exc}") from None
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def _decode_or_reason(source: Source, size: int) -> np.ndarray | str:
    try:
        return decode_image(source, size)
    except BadImageError as err:
        return str(err)


def _chunks(sources: Iterable[Source], n: int) -> Iterator[list[Source]]:
    it = iter(sources)
    while chunk := list(islice(it, n)):
        yield chunk


def write_images(
    sources: Iterable[Source],
    n_sources: int,
    path: Path,
    size: int,
    *,
    workers: int | None = None,
    desc: str = "images",
) -> ImageReport:
    """Decode ``n_sources`` images into a new ``.npy`` file ``[n_ok, 3, size, size]`` uint8.

    Usable images are written contiguously in source order; ``report.ok`` says which sources they
    came from. The result is deterministic whatever ``workers`` (threads; default
    :func:`default_workers`). Never holds more than one chunk of decoded images in memory.
    """
    workers = workers or default_workers()
    ok = np.zeros(n_sources, dtype=bool)
    report = ImageReport(ok=ok)
    out = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.uint8, shape=(n_sources, 3, size, size)
    )
    row = 0
    index = 0
    chunk_size = CHUNK_PER_THREAD * workers
    log.info("decoding %d images to %dx%d with %d threads", n_sources, size, size, workers)
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(total=n_sources, desc=desc, unit="img", disable=None, leave=False) as bar,
    ):
        for chunk in _chunks(sources, chunk_size):
            if index + len(chunk) > n_sources:
                raise ValueError(f"more than the announced {n_sources} image sources")
            results = (
                list(pool.map(_decode_or_reason, chunk, [size] * len(chunk)))
                if workers > 1
                else [_decode_or_reason(s, size) for s in chunk]
            )
            for result in results:
                if isinstance(result, str):
                    if result.startswith("missing"):
                        report.missing += 1
                    else:
                        report.corrupt += 1
                    if len(report.examples) < 20:
                        report.examples.append((index, result))
                    log.warning("image %d excluded: %s", index, result)
                else:
                    out[row] = result
                    ok[index] = True
                    row += 1
                index += 1
            bar.update(len(chunk))
    if index != n_sources:
        raise ValueError(f"got {index} image sources, expected {n_sources}")
    out.flush()
    del out
    shrink_npy(path, row)
    log.info(
        "images: %d usable, %d missing, %d corrupt (of %d)",
        row,
        report.missing,
        report.corrupt,
        n_sources,
    )
    return report


def _read_header(f: BinaryIO) -> tuple[tuple[int, int], tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    return version, shape, fortran, dtype


def shrink_npy(path: Path, n_rows: int) -> None:
    """Keep only the first ``n_rows`` rows of a C-ordered ``.npy`` file, in place.

    NumPy pads the header so the first axis can change length without moving the data; the header
    is rewritten and the file truncated. (If the header would not fit, the rows are copied.)
    """
    with open(path, "r+b") as f:
        version, shape, fortran, dtype = _read_header(f)
        if fortran:
            raise ValueError(f"{path}: Fortran-ordered arrays are not supported")
        if n_rows == shape[0]:
            return
        if not 0 <= n_rows <= shape[0]:
            raise ValueError(f"{path}: cannot shrink {shape[0]} rows to {n_rows}")
        offset = f.tell()
        new_shape = (n_rows, *shape[1:])
        header = io.BytesIO()
        meta = {
            "descr": np.lib.format.dtype_to_descr(dtype),
            "fortran_order": False,
            "shape": new_shape,
        }
        if version == (1, 0):
            np.lib.format.write_array_header_1_0(header, meta)
        else:
            np.lib.format.write_array_header_2_0(header, meta)
        if len(header.getvalue()) == offset:
            row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
            f.seek(0)
            f.write(header.getvalue())
            f.truncate(offset + n_rows * row_bytes)
            return
    # Header length changed (not expected with NumPy's padding): copy the rows to a new file.
    src = np.load(path, mmap_mode="r")
    tmp = path.with_name(path.name + ".shrink.npy")
    dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=new_shape)
    for start in range(0, n_rows, 1024):
        dst[start : start + 1024] = src[start : min(n_rows, start + 1024)]
    dst.flush()
    del dst, src
    os.replace(tmp, path)


def compact_images(path: Path, keep_rows: np.ndarray) -> None:
    """Keep only the rows ``keep_rows`` (increasing) of the image file, in place and in order."""
    keep_rows = np.asarray(keep_rows, dtype=np.int64)
    if keep_rows.size and np.any(np.diff(keep_rows) <= 0):
        raise ValueError("keep_rows must be strictly increasing")
    arr = np.load(path, mmap_mode="r+")
    if keep_rows.size == arr.shape[0]:
        del arr
        return
    for dst, src in enumerate(keep_rows.tolist()):
        if dst != src:  # src >= dst: moving rows forward never overwrites a row still needed
            arr[dst] = arr[src]
    arr.flush()
    del arr
    shrink_npy(path, int(keep_rows.size))


def open_images(path: Path) -> np.ndarray:
    """The image file as a read-only memmap ``[N, 3, H, W]`` uint8."""
    return np.load(path, mmap_mode="r")
