"""In-memory image datasets: uint8 pixel arrays, integer labels and class names.

Every source (CIFAR-10, a folder tree, an archive, a CSV or DataFrame) ends up as an
:class:`ImageArrays` per split, bundled in a :class:`DatasetBundle`. Nothing above the data
layer ever sees a file path again, except for galleries and predictions that name images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnnlab.errors import DataError


@dataclass
class ImageArrays:
    """One split: ``x`` is ``(N, H, W, 3)`` uint8, ``y`` is ``(N,)`` int64 class indices.

    ``x`` is an in-memory array, a memory map of a decoded-pixel cache entry, a
    :class:`~cnnlab.data.rows.RowView` of one, or a :class:`~cnnlab.data.rows.JoinedRows` of
    several splits (rows read only when a batch asks for them)."""

    x: np.ndarray
    y: np.ndarray
    class_names: list[str]
    paths: list[str] | None = None  # where each image came from (for galleries, predictions)

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or self.x.shape[-1] != 3 or self.x.dtype != np.uint8:
            raise DataError(f"images must be (N, H, W, 3) uint8, got {self.x.shape} {self.x.dtype}")
        if len(self.x) != len(self.y):
            raise DataError(f"{len(self.x)} images but {len(self.y)} labels")
        self.y = np.asarray(self.y, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.x.shape[1]), int(self.x.shape[2])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, index: np.ndarray) -> "ImageArrays":
        """These rows; pixels decoded to disk stay there (an index view, see rows.py)."""
        from cnnlab.data.rows import subset

        index = np.asarray(index)
        paths = [self.paths[i] for i in index] if self.paths is not None else None
        return ImageArrays(subset(self.x, index), self.y[index], list(self.class_names), paths)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.y, minlength=self.num_classes)
        return {name: int(c) for name, c in zip(self.class_names, counts)}


def imbalance_ratio(counts: Any) -> float:
    """Largest / smallest class count (inf when a class has no image; 1.0 for no classes)."""
    c = np.asarray(list(counts.values()) if isinstance(counts, dict) else counts, dtype=float)
    if not len(c):
        return 1.0
    return float(c.max() / c.min()) if c.min() > 0 else float("inf")


def imbalance(counts: dict[str, int]) -> dict[str, Any]:
    """The class counts with their imbalance ratio and the largest and smallest class, named."""
    if not counts:
        return {"class_counts": {}, "ratio": 1.0, "largest": None, "smallest": None}
    largest = max(counts, key=lambda k: counts[k])
    smallest = min(counts, key=lambda k: counts[k])
    return {"class_counts": dict(counts), "ratio": imbalance_ratio(counts), "largest": largest, "smallest": smallest}


def describe_imbalance(info: dict[str, Any]) -> str:
    """One line: "imbalance ratio 100.0 (largest airplane 5,000, smallest truck 50 images)"."""
    if not info.get("class_counts"):
        return "imbalance ratio -"
    c = info["class_counts"]
    return (f"imbalance ratio {info['ratio']:.1f} (largest {info['largest']} {c[info['largest']]:,}, "
            f"smallest {info['smallest']} {c[info['smallest']]:,} images)")


@dataclass
class DatasetBundle:
    """The splits a source provides. ``train`` is always there; ``val``/``test`` may not be."""

    name: str
    train: ImageArrays
    test: ImageArrays | None = None
    val: ImageArrays | None = None
    info: dict[str, object] = field(default_factory=dict)  # skipped files, cache hit, ...

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names

    def splits(self) -> dict[str, ImageArrays]:
        out = {"train": self.train}
        if self.val is not None:
            out["val"] = self.val
        if self.test is not None:
            out["test"] = self.test
        return out

    def all_images(self) -> ImageArrays:
        """Every image of every split, as one split (for evaluating on a whole source): a joined
        view of the splits' pixels (data/rows.py JoinedRows), no copy, so memory does not grow
        with the source."""
        return join_splits(list(self.splits().values()))


def join_splits(parts: list[ImageArrays]) -> ImageArrays:
    """``parts`` (same classes, same image size) one after another as one split, without copying
    pixels: the joined ``x`` reads each part's rows (memory-mapped or in memory) a batch at a time."""
    from cnnlab.data.rows import join_rows

    if len(parts) == 1:
        return parts[0]
    sizes = {p.image_size for p in parts}
    if len(sizes) > 1:
        raise DataError(f"cannot join splits of different image sizes: {sorted(sizes)}")
    paths = None
    if all(p.paths is not None for p in parts):
        paths = [q for p in parts for q in p.paths]  # type: ignore[union-attr]
    return ImageArrays(
        join_rows([p.x for p in parts]),
        np.concatenate([p.y for p in parts]),  # the labels: 8 bytes an image, small beside the pixels
        list(parts[0].class_names),
        paths,
    )


def align_labels(split: ImageArrays, class_names: list[str], where: str) -> np.ndarray:
    """Map a source's labels onto a model's classes by name; unknown classes are an error."""
    lookup = {n: i for i, n in enumerate(class_names)}
    present = sorted(set(np.unique(split.y).tolist()))
    unknown = [split.class_names[i] for i in present if split.class_names[i] not in lookup]
    if unknown:
        raise DataError(
            f"{where}: label {unknown[0]!r} is not a class the model knows ({', '.join(class_names)})"
        )
    mapping = np.array([lookup.get(n, -1) for n in split.class_names])
    return mapping[split.y]


def check_classes(class_names: list[str], counts: dict[str, int], where: str) -> None:
    """Refuse datasets that cannot train a classifier: fewer than two classes or an empty one."""
    empty = [c for c in class_names if counts.get(c, 0) == 0]
    if empty:
        raise DataError(f"{where}: class folder {empty[0]!r} holds no images")
    folded: dict[str, str] = {}
    for c in class_names:  # "Cat" and "cat": one class spelt two ways, almost always a mistake
        other = folded.setdefault(str(c).casefold().strip(), c)
        if other != c:
            raise DataError(f"{where}: classes {other!r} and {c!r} differ only in letter case (or spaces); "
                            "rename or merge them (one label per class)")
    if len(class_names) < 2:
        found = ", ".join(repr(c) for c in class_names) or "none"
        raise DataError(f"{where}: need at least two classes to train a classifier, found {found}")


def with_tuning_split(train: DatasetBundle, tuning: DatasetBundle) -> DatasetBundle:
    """``train`` with every image of ``tuning`` as its validation split (labels mapped by name)."""
    val = tuning.all_images()
    y = align_labels(val, train.class_names, "tuning_data")
    return DatasetBundle(train.name, train.train, train.test, ImageArrays(val.x, y, train.class_names, val.paths),
                         dict(train.info))
