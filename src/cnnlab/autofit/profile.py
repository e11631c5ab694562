"""What the data is (count, image sizes, modes, classes), and loading it for a fit.

Images of mixed sizes are decoded at :data:`MIXED_DECODE_SIZE` px (resized and centre-cropped
by the rule of cnnlab/data/decode.py), so real photos need no ``data.image_size``; every
candidate then resizes to what its model needs inside the model (``model.input_size``).

A validation split is held out from the training data when neither the source nor
``tuning_data`` gives one: :data:`VALIDATION_SHARE` of it (20% below
:data:`SMALL_DATA` images), stratified by class and seeded.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.data.dataset import DatasetBundle, ImageArrays, align_labels, describe_imbalance, imbalance
from cnnlab.data.split import split_train_val
from cnnlab.errors import DataError

MIXED_DECODE_SIZE = 224  #: decode size of a source whose images differ in size
VALIDATION_SHARE = 0.1  #: held out for validation when no validation split is given ...
SMALL_DATA = 2000  #: ... and 0.2 below this many training images
PROFILE_SAMPLE = 200  #: image headers read to profile the files' own sizes and modes


@dataclass
class DataProfile:
    count: int  # training images (after the validation split)
    val_count: int
    test_count: int
    num_classes: int
    class_names: list[str]
    per_class_min: int
    image_size: int  # the side images are decoded at
    mixed_sizes: bool  # the files differ in size (decoded at MIXED_DECODE_SIZE)
    file_sizes: dict[str, Any] = field(default_factory=dict)  # min / median / max side of a sample
    modes: dict[str, int] = field(default_factory=dict)  # PIL modes in a sample of the files
    validation: str = ""  # where the validation split came from
    class_counts: dict[str, int] = field(default_factory=dict)  # training images per class
    imbalance_ratio: float = 1.0  # largest / smallest class (training split)
    #: duplicate pairs found at the fit's start and training images removed (DuplicateReport.counts)
    duplicates: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        sizes = self.file_sizes
        files = (f", files {sizes['min']}-{sizes['max']} px (median {sizes['median']})" if sizes else "")
        return (f"data: {self.count:,} train, {self.val_count:,} val ({self.validation}), {self.test_count:,} test "
                f"images, {self.num_classes} classes (smallest {self.per_class_min:,}), decoded at "
                f"{self.image_size}x{self.image_size}{' (mixed sizes)' if self.mixed_sizes else ''}{files}; "
                f"{describe_imbalance(imbalance(self.class_counts))}")


def load_bundle(source: Any, *, label_column: str | None = None, image_column: str | None = None,
                skip_bad: bool = False, log: Callable[[str], None] = print) -> tuple[DatasetBundle, bool]:
    """Load any data source; images of different sizes are decoded at MIXED_DECODE_SIZE.

    Returns (bundle, mixed_sizes)."""
    from cnnlab.data.sources import load_source

    if isinstance(source, DatasetBundle):
        return source, False
    kwargs = {"label_column": label_column, "image_column": image_column, "skip_bad": skip_bad}
    try:
        return load_source(source, **kwargs), False
    except DataError as exc:
        if "different sizes" not in str(exc):
            raise
    log(f"data: the images differ in size; decoding them all at {MIXED_DECODE_SIZE}x{MIXED_DECODE_SIZE}")
    return load_source(source, image_size=MIXED_DECODE_SIZE, **kwargs), True


def with_validation(bundle: DatasetBundle, tuning: DatasetBundle | None, seed: int = 0
                    ) -> tuple[ImageArrays, ImageArrays, ImageArrays | None, str]:
    """(train, val, test, where val came from): tuning_data, the source's own, or held out."""
    train, test = bundle.train, bundle.test
    if tuning is not None:
        val = tuning.all_images()
        if val.image_size != train.image_size:
            raise DataError(f"tuning_data: images of {val.image_size[0]}x{val.image_size[1]} but the training "
                            f"images are {train.image_size[0]}x{train.image_size[1]}")
        y = align_labels(val, train.class_names, "tuning_data")
        return train, ImageArrays(val.x, y, train.class_names, val.paths), test, "tuning_data"
    if bundle.val is not None:
        return train, bundle.val, test, "the source's own"
    share = VALIDATION_SHARE if len(train) >= SMALL_DATA else 2 * VALIDATION_SHARE
    train, val = split_train_val(train, share, "stratified", seed)
    assert val is not None
    return train, val, test, f"{share:.0%} held out, stratified"


def profile_data(train: ImageArrays, val: ImageArrays, test: ImageArrays | None, *, mixed_sizes: bool,
                 validation: str) -> DataProfile:
    counts = np.bincount(train.y, minlength=train.num_classes)
    sides, modes = _file_sample(train.paths or [])
    return DataProfile(
        count=len(train), val_count=len(val), test_count=len(test) if test is not None else 0,
        num_classes=train.num_classes, class_names=list(train.class_names), per_class_min=int(counts.min()),
        image_size=int(train.image_size[0]), mixed_sizes=mixed_sizes,
        file_sizes=({"min": int(min(sides)), "median": int(np.median(sides)), "max": int(max(sides))} if sides else {}),
        modes=modes, validation=validation, class_counts=train.class_counts(),
        imbalance_ratio=imbalance(train.class_counts())["ratio"])


def _file_sample(paths: list[str]) -> tuple[list[int], dict[str, int]]:
    """The shorter side and the mode of up to PROFILE_SAMPLE files (headers only; archive members skipped)."""
    from PIL import Image

    sides: list[int] = []
    modes: Counter[str] = Counter()
    step = max(1, len(paths) // PROFILE_SAMPLE)
    for p in paths[::step][:PROFILE_SAMPLE]:
        if not Path(p).is_file():
            continue
        try:
            with Image.open(p) as im:
                sides.append(min(im.size))
                modes[im.mode] += 1
        except OSError:
            continue
    return sides, dict(modes)
