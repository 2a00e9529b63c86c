"""Small file helpers shared by the stages."""
from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Iterable


def sha256_files(paths: Iterable[str | Path]) -> str:
    """sha256 of the files' bytes, read in order (one file: its usual sha256)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    return sha256_files([path])


def read_json(path: str | Path, what: str = "file", hint: str = ""):
    """A JSON file's content; InputError naming the file when it is missing or not valid JSON."""
    import json

    from reg2rg.errors import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} not found{f' ({hint})' if hint else ''}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise InputError(path, f"not valid JSON: {err}") from None


def relative_source(path, source_root) -> str | None:
    """`path` relative to the data set root (POSIX separators): as written (".." folded) when it is written
    under the root, else after resolving links; None without a root or outside it. What the tables, sidecars and logs may say
    of where a file came from (an absolute path, or a folder named after the patient above the root, can carry
    a patient identifier)."""
    import os

    if source_root is None:
        return None
    path, root = Path(os.path.normpath(path)), Path(os.path.normpath(source_root))
    for p, r in ((path, root), (path.resolve(), root.resolve())):
        try:
            return p.relative_to(r).as_posix()
        except ValueError:
            pass
    return None


@contextlib.contextmanager
def atomic_path(path: str | Path, *, suffix: str = ""):
    """The one atomic write: yields a temporary path beside `path` to write the file to (any writer: text,
    Parquet, safetensors, NIfTI); when the block ends without an error the temporary file is renamed onto
    `path` (os.replace), so a reader sees the old file or the whole new one, never a part. On an error it is
    removed and the old file (or none) stays. The temporary name is hidden and names this process and thread
    (two writers of one path do not share it); it ends in `suffix` for writers that choose the format by the
    file name (".nii.gz": SimpleITK and nibabel compress by it)."""
    import os
    import threading

    path = Path(path)
    base = path.name[: -len(suffix)] if suffix and path.name.endswith(suffix) else path.name
    tmp = path.with_name(f".{base}.tmp{os.getpid()}-{threading.get_ident()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically (atomic_path): a reader never sees half a file, and an
    interrupted write leaves the old file (or none). Returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_json_atomic(path: str | Path, data, *, indent: int | None = 2, **dumps_kwargs) -> Path:
    """`data` as JSON (json.dumps with `indent` and any other json.dumps keywords) plus a final newline,
    written atomically (write_text_atomic). Returns the path."""
    import json

    return write_text_atomic(path, json.dumps(data, indent=indent, **dumps_kwargs) + "\n")


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith((".nii", ".nii.gz"))


def check_nifti_complete(path: str | Path) -> None:
    """InputError naming `path` when a NIfTI (.nii or .nii.gz) is truncated or corrupt; the one check for
    volumes (ingest) and masks (masks, report) alike.

    ITK reads a truncated NIfTI without complaint (the missing voxels come back as garbage or zeros), so
    check the size: a .nii must hold vox_offset + data bytes; a .nii.gz's gzip trailer (ISIZE, the
    uncompressed length mod 2^32) must match, else the stream is decompressed to find out for sure."""
    import struct
    import zlib

    from reg2rg.errors import InputError

    path = Path(path)
    name = path.name.lower()
    gz = name.endswith(".gz")
    try:
        with open(path, "rb") as f:
            head = f.read(352)
            if gz:
                try:
                    head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head + f.read(1 << 16), 352)
                except zlib.error as err:
                    raise InputError(path, f"not a valid gzip file ({err})") from None
    except OSError as err:
        raise InputError(path, f"cannot open ({err.strerror})") from None
    if len(head) < 348:
        raise InputError(path, f"truncated or corrupt: only {len(head)} bytes of the 348-byte NIfTI header")
    for endian in "<>":
        if struct.unpack(endian + "i", head[:4])[0] in (348, 540):
            break
    else:
        raise InputError(path, "not a NIfTI file (bad header size field)")
    if struct.unpack(endian + "i", head[:4])[0] == 540:
        return  # NIfTI-2: leave the checks to the reader
    dims = struct.unpack(endian + "8h", head[40:56])
    bitpix = struct.unpack(endian + "h", head[72:74])[0]
    vox_offset = int(struct.unpack(endian + "f", head[108:112])[0])
    ndim = max(0, min(7, dims[0]))
    nvox = 1
    for d in dims[1: 1 + ndim]:
        nvox *= max(1, d)
    expected = max(vox_offset, 352) + nvox * bitpix // 8
    if not gz:
        actual = path.stat().st_size
        if actual < expected:
            raise InputError(path, f"truncated: {actual} bytes where the header promises {expected}")
        return
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - 4))
        isize = struct.unpack("<I", f.read(4))[0] if size >= 4 else -1
    if isize == expected % (1 << 32):
        return
    # Trailer mismatch: a truncated file, or a multi-member gzip (bgzip) whose last member is small.
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    total = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                while chunk:
                    total += len(d.decompress(chunk))
                    if d.eof:
                        chunk = d.unused_data
                        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    else:
                        chunk = b""
    except zlib.error as err:
        raise InputError(path, f"corrupt gzip data after {total} bytes ({err})") from None
    if total < expected:
        raise InputError(path, f"truncated or corrupt gzip: it decompresses to {total} bytes where the NIfTI "
                               f"header promises {expected}")


def refuse_overwrite(inputs: dict[str, object], outputs: dict[str, object]) -> None:
    """InputError when an output path is an input (or another output) once resolved (symbolic links and
    `..` followed): `reg2rg ingest X X`, `report --out` = `--ct`, `--html` = `--out`. `inputs` and `outputs`
    map an option's name (as the user typed it) to a path or None (not given). An input folder (a DICOM
    series) also counts each of its files as an input. The message names the path and both options."""
    from reg2rg.errors import InputError

    seen: dict[Path, tuple[str, str]] = {}  # resolved path -> (option, "an input" | "another output")
    for name, value in inputs.items():
        if value is None:
            continue
        path = Path(value).resolve()
        seen.setdefault(path, (name, "an input"))
        try:
            entries = list(path.iterdir()) if path.is_dir() else []
        except OSError:  # not a path at all (evaluate's --meta may be JSON text), or unreadable: no files
            entries = []
        for entry in entries:
            seen.setdefault(entry.resolve(), (f"a file in {name}", "an input"))
    for name, value in outputs.items():
        if value is None:
            continue
        path = Path(value).resolve()
        if path in seen:
            other, what = seen[path]
            raise InputError(value, f"{name} is the same path as {other}: writing it would overwrite {what}; "
                                    "choose another output path")
        seen[path] = (name, "another output")
