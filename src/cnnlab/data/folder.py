"""Image-folder trees, on disk or inside .zip / .tar / .tar.gz archives.

Layouts understood (one wrapping folder around either is skipped):

    root/<class>/<image>                          one split: "train"
    root/{train,test,val}/<class>/<image>         explicit splits ("validation", "valid" = val)

Images in sub-folders of a class folder belong to that class, as in Keras's
``image_dataset_from_directory``. Class names are the sorted folder names of the training split.
Files that are not images by their suffix (README, .DS_Store) are ignored.

Each split comes back in a fixed shuffled order (seed ``ORDER_SEED``), as Keras's
``image_dataset_from_directory`` shuffles file lists: a folder tree is stored class by class,
and Keras's "last 20% for validation" split would otherwise hold out whole classes.
"""

from __future__ import annotations

import tarfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from cnnlab.data.dataset import DatasetBundle, ImageArrays, check_classes
from cnnlab.data.decode import is_image_name
from cnnlab.data.decode_store import Item, decode_to_folder, header_size, open_split, split_shapes
from cnnlab.errors import DataError

SPLIT_NAMES = {"train": "train", "test": "test", "val": "val", "validation": "val", "valid": "val"}
ORDER_SEED = 1337
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")

# Caps on what an archive may ask cnnlab to hold in memory (an archive is untrusted input): each
# member is read whole, so a member declaring 100 GB (a GNU sparse tar member costs a few bytes),
# or a zip member expanding 1000:1, would exhaust memory. Read at call time (tests lower them).
MAX_MEMBER_BYTES = 256 * 1024 * 1024  # one image file
MAX_MEMBERS = 2_000_000  # files listed in one archive
MAX_ZIP_RATIO = 200  # uncompressed / compressed size of one zip member (PNG/JPEG barely compress)


def is_archive(path: str | Path) -> bool:
    name = str(path).lower()
    return any(name.endswith(s) for s in ARCHIVE_SUFFIXES)


@dataclass
class _Entry:
    split: str
    label: str
    name: str  # path shown to the user: the file path, or "archive.tar.gz:member"
    key: str  # how the reader finds the bytes: a file path or an archive member name


def _layout(rel_paths: list[PurePosixPath], dirs: set[PurePosixPath], where: str) -> tuple[
    list[tuple[str, str, int]], dict[str, set[str]]
]:
    """Assign each relative path a (split, class); return them and the class folders per split."""
    # Skip one wrapping folder ("cifar10/train/cat/1.png" -> "train/cat/1.png").
    strip = 0
    tops = {p.parts[0] for p in rel_paths if len(p.parts) > 1}
    if len(tops) == 1 and all(len(p.parts) >= 3 for p in rel_paths):
        top = next(iter(tops))
        if top.lower() not in SPLIT_NAMES:
            below = {p.parts[1] for p in rel_paths}
            strip = 1 if len(below) > 1 or below <= set(SPLIT_NAMES) else 0
    parts_list = [p.parts[strip:] for p in rel_paths]
    dir_parts = [d.parts[strip:] for d in dirs if len(d.parts) > strip]
    firsts = {p[0].lower() for p in parts_list if len(p) >= 2}
    # Only split folders at the top is the split layout even without train/ (refused below),
    # rather than a dataset whose classes are called "test" and "val".
    split_layout = bool(firsts) and firsts <= set(SPLIT_NAMES)
    assigned: list[tuple[str, str, int]] = []
    folders: dict[str, set[str]] = {}
    for i, parts in enumerate(parts_list):
        if split_layout:
            if len(parts) < 3:
                continue  # a file directly under train/ has no class
            split, label = SPLIT_NAMES[parts[0].lower()], parts[1]
        else:
            if len(parts) < 2:
                continue  # a file at the top has no class
            split, label = "train", parts[0]
        assigned.append((split, label, i))
        folders.setdefault(split, set()).add(label)
    for d in dir_parts:  # class folders with no image at all still count (and are errors)
        if split_layout and len(d) == 2 and d[0].lower() in SPLIT_NAMES:
            folders.setdefault(SPLIT_NAMES[d[0].lower()], set()).add(d[1])
        elif not split_layout and len(d) == 1:
            folders.setdefault("train", set()).add(d[0])
    if not assigned:
        raise DataError(
            f"{where}: found no images in class folders; expected root/<class>/<image> "
            "or root/train/<class>/<image>"
        )
    if split_layout and "train" not in folders:
        raise DataError(f"{where}: has {sorted(folders)} folders but no train/ folder")
    return assigned, folders


def unsafe_member(name: str) -> bool:
    """An archive member name that is absolute (``/x.png``, ``C:/x.png``) or climbs out (``a/../x``)."""
    norm = name.replace("\\", "/")
    return norm.startswith("/") or (len(norm) > 1 and norm[1] == ":") or ".." in norm.split("/")


def scan(source: Path) -> tuple[list[_Entry], dict[str, set[str]], list[str], list[str]]:
    """List a folder's or archive's images with their split and class; also the files ignored (not
    images) and, in an archive, the image members refused for an absolute or ``..`` path."""
    where = str(source)
    rel: list[PurePosixPath] = []
    keys: list[str] = []
    dirs: set[PurePosixPath] = set()
    ignored: list[str] = []
    unsafe: list[str] = []
    if source.is_dir():
        for p in sorted(source.rglob("*")):
            r = PurePosixPath(p.relative_to(source).as_posix())
            if any(part.startswith(".") for part in r.parts):
                continue
            if p.is_dir():
                dirs.add(r)
            elif is_image_name(p.name):
                rel.append(r)
                keys.append(str(p))
            else:
                ignored.append(str(p))
        prefix = ""
    else:
        names, dir_names = _archive_names(source)
        for n in names:
            r = PurePosixPath(n)
            if unsafe_member(n):
                (unsafe if is_image_name(n) else ignored).append(n)
                continue
            if any(part.startswith(".") or part == "__MACOSX" for part in r.parts):
                continue
            if is_image_name(n):
                rel.append(r)
                keys.append(n)
            else:
                ignored.append(n)
        dirs = {PurePosixPath(d.rstrip("/")) for d in dir_names if not unsafe_member(d)}
        for r in rel:  # archives may omit directory entries
            dirs.update(r.parents)
        dirs.discard(PurePosixPath("."))
        prefix = f"{source}:"
    assigned, folders = _layout(rel, dirs, where)
    entries = [
        _Entry(split, label, prefix + (keys[i] if prefix else keys[i]), keys[i])
        for split, label, i in assigned
    ]
    return entries, folders, ignored, unsafe


def _archive_names(path: Path) -> tuple[list[str], list[str]]:
    try:
        if str(path).lower().endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                infos = zf.infolist()
                _check_count(path, len(infos))
                for info in infos:
                    if not info.is_dir():
                        _check_zip_member(path, info)
                return [i.filename for i in infos if not i.is_dir()], [
                    i.filename for i in infos if i.is_dir()
                ]
        with tarfile.open(path) as tf:
            members = []
            for m in tf:  # one member at a time, so a huge member list stops at the cap
                members.append(m)
                _check_count(path, len(members))
                if m.isfile():
                    _check_tar_member(path, m)
            return [m.name for m in members if m.isfile()], [m.name for m in members if m.isdir()]
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read archive ({_brief(exc)})") from None


def _check_count(path: Path, n: int) -> None:
    if n > MAX_MEMBERS:
        raise DataError(f"{path}: archive lists over {MAX_MEMBERS:,} members, refused (cnnlab's limit)")


def _check_tar_member(path: Path, m: tarfile.TarInfo) -> None:
    if m.issparse():
        raise DataError(f"{path}:{m.name}: sparse tar member, refused (an image file is never sparse)")
    if m.size > MAX_MEMBER_BYTES:
        raise DataError(f"{path}:{m.name}: member of {m.size:,} bytes exceeds cnnlab's limit of "
                        f"{MAX_MEMBER_BYTES:,} bytes per file")


def _check_zip_member(path: Path, info: zipfile.ZipInfo) -> None:
    if info.file_size > MAX_MEMBER_BYTES:
        raise DataError(f"{path}:{info.filename}: member of {info.file_size:,} bytes exceeds cnnlab's limit of "
                        f"{MAX_MEMBER_BYTES:,} bytes per file")
    if info.file_size > 1024 * 1024 and info.file_size > MAX_ZIP_RATIO * max(1, info.compress_size):
        raise DataError(f"{path}:{info.filename}: member expands {info.file_size / max(1, info.compress_size):,.0f}:1 "
                        f"(over {MAX_ZIP_RATIO}:1), refused as a possible zip bomb")


def _read_capped(fh, where: str) -> bytes:  # noqa: ANN001 - a zip or tar member's file object
    """The member's bytes, refusing one that turns out larger than its header said (zip sizes can lie)."""
    data = fh.read(MAX_MEMBER_BYTES + 1)
    if len(data) > MAX_MEMBER_BYTES:
        raise DataError(f"{where}: member exceeds cnnlab's limit of {MAX_MEMBER_BYTES:,} bytes per file")
    return data


def _iter_bytes(source: Path, wanted: set[str]) -> Iterator[tuple[str, bytes]]:
    """Yield (member, bytes) for the wanted archive members, in archive order (one pass)."""
    try:
        if str(source).lower().endswith(".zip"):
            with zipfile.ZipFile(source) as zf:
                for info in zf.infolist():
                    if info.filename in wanted:
                        _check_zip_member(source, info)
                        with zf.open(info) as fh:
                            yield info.filename, _read_capped(fh, f"{source}:{info.filename}")
            return
        with tarfile.open(source, mode="r|*") as tf:  # streaming: one pass over a .tar.gz
            for member in tf:
                if member.isfile() and member.name in wanted:
                    _check_tar_member(source, member)  # the archive may have changed since the scan
                    fh = tf.extractfile(member)
                    yield member.name, _read_capped(fh, f"{source}:{member.name}") if fh else b""
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(f"{source}: archive is corrupt or truncated ({_brief(exc)})") from None


def _brief(exc: BaseException) -> str:
    """One line of an archive library's error (tarfile lists every method it tried, one per line)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and "could not be opened" in lines[0]:
        return "not a tar archive, or a compressed one that is corrupt"
    return lines[0].rstrip(":") if lines else type(exc).__name__


def _items(entries: list[_Entry], class_names: list[str], where: str) -> list[Item]:
    """Each entry's split, class and row: a split's rows are its entries in a fixed shuffled order."""
    lookup = {c: k for k, c in enumerate(class_names)}
    items: list[Item | None] = [None] * len(entries)
    for split in ("train", "val", "test"):
        idx = [i for i, e in enumerate(entries) if e.split == split]
        unknown = sorted({entries[i].label for i in idx} - set(lookup))
        if unknown:
            raise DataError(f"{where}: {split} split has class {unknown[0]!r} that the train split lacks")
        for row, k in enumerate(np.random.default_rng(ORDER_SEED).permutation(len(idx))):
            e = entries[idx[k]]
            items[idx[k]] = Item(split, row, lookup[e.label], e.name, e.key)
    return [it for it in items if it is not None]


def _payloads(source: Path, items: list[Item]) -> Iterator[tuple[Item, str | bytes]]:
    """(item, path) for a folder, (item, bytes) in archive order for an archive (missing: empty)."""
    if source.is_dir():
        yield from ((it, it.key) for it in items)
        return
    index = {it.key: it for it in items}
    seen = set()
    for member, data in _iter_bytes(source, set(index)):
        seen.add(member)
        yield index[member], data
    for it in items:
        if it.key not in seen:
            yield it, b""


def decode_to(
    out_dir: Path,
    source: Path,
    items: list[Item],
    image_size: int | None,
    skip_bad: bool,
    class_names: list[str],
    where: str,
    payloads: Callable[[], Iterable[tuple[Item, str | bytes]]] | None = None,
) -> tuple[dict[str, ImageArrays | None], list[str]]:
    """Decode ``items`` into ``out_dir`` (decode_store.py) and open each split as a memory map."""
    read = payloads or (lambda: _payloads(source, items))
    sizes = None if image_size is not None else ((it, header_size(data)) for it, data in read())
    shapes = split_shapes(sizes if sizes is not None else ((it, None) for it in items), image_size, where)
    counts = {s: sum(1 for it in items if it.split == s) for s in shapes}
    kept, good, bad = decode_to_folder(out_dir, items, read(), shapes, counts, image_size, skip_bad,
                                       desc=f"decoding {Path(where).name}")
    splits: dict[str, ImageArrays | None] = {"train": None, "val": None, "test": None}
    for split, n in counts.items():
        if not kept[split]:
            continue
        y = np.zeros(n, dtype=np.int64)
        paths = [""] * n
        for it in items:
            if it.split == split:
                y[it.row], paths[it.row] = it.label, it.name
        mask = good[split]
        splits[split] = ImageArrays(open_split(out_dir / f"{split}_x.npy", kept[split]), y[mask], class_names,
                                    [p for p, g in zip(paths, mask) if g])
    return splits, bad


def load_tree(
    source: Path,
    image_size: int | None = None,
    skip_bad: bool = False,
    name: str | None = None,
    progress: Callable[[str], None] | None = None,
    out_dir: Path | None = None,
) -> DatasetBundle:
    """Load a folder tree or an archive of one, decoded into ``out_dir`` (a cache entry being
    built) or a scratch folder, as memory-mapped splits."""
    where = str(source)
    if not source.exists():
        raise DataError(f"{where}: no such file or folder")
    entries, folders, ignored, unsafe = scan(source)
    refused = [f"{where}:{n}: archive member with an absolute or '..' path, refused" for n in unsafe]
    if refused and not skip_bad:
        raise DataError(f"{refused[0]} (use --skip-bad to skip bad files and count them)")
    class_names = sorted(folders["train"])
    counts = {c: 0 for c in class_names}
    for e in entries:
        if e.split == "train":
            counts[e.label] = counts.get(e.label, 0) + 1
    check_classes(class_names, counts, where)
    if progress:
        progress(f"decoding {len(entries):,} images from {where}")
    items = _items(entries, class_names, where)
    if out_dir is None:
        from cnnlab.data.cache import scratch_folder

        with scratch_folder() as tmp:  # the open memory maps keep the deleted files readable
            splits, bad = decode_to(tmp, source, items, image_size, skip_bad, class_names, where)
    else:
        splits, bad = decode_to(out_dir, source, items, image_size, skip_bad, class_names, where)
    bad = refused + bad
    if splits["train"] is None:
        raise DataError(f"{where}: every training image was unreadable")
    left = splits["train"].class_counts()
    empty = [c for c in class_names if left[c] == 0]
    if empty:  # every image of a class was skipped: the class could never be learnt
        raise DataError(
            f"{where}: class folder {empty[0]!r} has no readable images ({len(bad)} bad files skipped)"
        )
    info = {"source": where, "skipped": len(bad), "skipped_files": bad[:50], "ignored_files": len(ignored)}
    return DatasetBundle(name or source.name, splits["train"], splits["test"], splits["val"], info)
