"""What gets encoded: image files or folders, an official base64 TSV, texts from a file."""
import dataclasses
import os
from typing import Iterable, Iterator, List, Optional

from ..data.errors import DataError, SkipCounter
from ..data.readers import IMAGE_EXTENSIONS, decode_image_bytes, iter_official_tsv, open_pairs
from ..iters import batched, first_of_each


@dataclasses.dataclass(frozen=True)
class ImageItem:
    """Encoded image bytes with their id, origin and (from a TSV) caption."""

    image_id: str
    data: bytes = dataclasses.field(repr=False)
    where: str
    caption: Optional[str] = None

    def decode(self):
        """RGB uint8 HWC; :class:`~ernievil2.data.errors.DataError` naming ``where`` if undecodable."""
        return decode_image_bytes(self.data, self.where)


def list_image_files(paths):
    """Files as given, and the images of folders (recursively, sorted); missing paths are errors."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs.sort()
                files.extend(os.path.join(root, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS))
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"image path not found: {path}")
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {', '.join(map(str, paths))}")
    return files


def iter_image_files(paths) -> Iterator[ImageItem]:
    """One item per image file; the id is the path."""
    for path in list_image_files(paths):
        with open(path, "rb") as f:
            yield ImageItem(path, f.read(), path)


def iter_tsv_images(path, counter: Optional[SkipCounter] = None) -> Iterator[ImageItem]:
    """One item per line of an official ``text \\t image_id \\t base64`` TSV (images may repeat)."""
    for record in iter_official_tsv(path, counter or SkipCounter("raise")):
        yield ImageItem(record.image_id, record.image, record.image_where, record.text)


def iter_pair_images(spec, counter: Optional[SkipCounter] = None) -> Iterator[ImageItem]:
    """One item per pair of any data format (a reader spec, :mod:`ernievil2.data.sources`), captioned."""
    for record in open_pairs(spec, counter or SkipCounter("raise")):
        yield ImageItem(record.image_id, record.image, record.image_where, record.text)


def unique_images(items: Iterable[ImageItem]) -> Iterator[ImageItem]:
    """The first item of each image id: a gallery holds every image once."""
    return first_of_each(items, key=lambda item: item.image_id)


def read_text_file(path) -> List[str]:
    """Non-empty lines of a UTF-8 text file, stripped."""
    with open(path, encoding="utf-8") as f:
        texts = [line.strip() for line in f if line.strip()]
    if not texts:
        raise ValueError(f"{path} has no text lines")
    return texts


def decoded_images(items, counter: SkipCounter):
    """``(item, rgb)`` for each decodable item; undecodable ones go to ``counter`` (raise or skip)."""
    for item in items:
        try:
            yield item, item.decode()
        except DataError as err:
            counter.report(err)


def encode_image_batches(model, items, batch_size, counter: SkipCounter):
    """``(items, rgb images, embeddings)`` per batch of decodable images; memory stays at one batch."""
    for chunk in batched(decoded_images(items, counter), batch_size):
        kept, images = zip(*chunk)
        yield kept, images, model.encode_images(images, batch_size)
