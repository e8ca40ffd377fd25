"""Galleries from an exported model and a source of images (and captions)."""
import os

import numpy as np

from ..data.errors import SkipCounter
from .index import TEXT_GALLERY_DIR, THUMBNAIL_SIZE, Gallery, make_thumbnail
from .inputs import encode_image_batches, unique_images


def caption_ids(image_ids):
    """``image_id#n``: the n-th caption of that image, so a text hit names its image."""
    counts = {}
    ids = []
    for image_id in image_ids:
        n = counts.get(image_id, 0)
        counts[image_id] = n + 1
        ids.append(f"{image_id}#{n}")
    return ids


def caption_image_id(caption_id):
    """The image id in a :func:`caption_ids` id (``a#b#2`` -> ``a#b``); None for an id of another form."""
    image_id, sep, n = caption_id.rpartition("#")
    return image_id if sep and n.isdigit() else None


def first_captions(image_ids, captions):
    """Each image's first caption in ``(image_id, text)`` order, None for an image without one."""
    first = {}
    for image_id, text in captions:
        first.setdefault(image_id, text)
    return [first.get(image_id) for image_id in image_ids]


def build_galleries(model, items, batch_size=16, counter=None, thumbnail_size=THUMBNAIL_SIZE, with_texts=True):
    """(image gallery, text gallery or None) from :class:`~.inputs.ImageItem` s.

    Each image id is encoded once (an official TSV repeats an image on every
    line that captions it) and keeps its first caption, which the search page
    shows under the image; every caption of a decodable image goes into the
    text gallery, which is what image -> text search looks through.
    """
    counter = counter or SkipCounter("raise")
    captions = []

    def noting_captions():
        for item in items:
            if item.caption is not None:
                captions.append((item.image_id, item.caption))
            yield item

    ids, embeddings, thumbnails = [], [], []
    for kept, images, batch in encode_image_batches(model, unique_images(noting_captions()), batch_size, counter):
        ids.extend(item.image_id for item in kept)
        embeddings.append(batch)
        thumbnails.extend(make_thumbnail(image, thumbnail_size) for image in images)
    if not ids:
        raise ValueError("no decodable images: the gallery would be empty")
    image_captions = first_captions(ids, captions) if captions else None
    image_gallery = Gallery.from_embeddings(
        np.concatenate(embeddings), ids, "image", model.model_id, texts=image_captions, thumbnails=thumbnails
    )
    decoded = set(ids)
    captions = [(image_id, text) for image_id, text in captions if image_id in decoded]
    if not (with_texts and captions):
        return image_gallery, None
    texts = [text for _, text in captions]
    text_gallery = Gallery.from_embeddings(
        model.encode_texts(texts), caption_ids(i for i, _ in captions), "text", model.model_id, texts=texts
    )
    return image_gallery, text_gallery


def save_galleries(folder, image_gallery, text_gallery=None):
    """The image gallery in ``folder``, the text gallery (if any) in ``folder/texts``."""
    image_gallery.save(folder)
    if text_gallery is not None:
        text_gallery.save(os.path.join(folder, TEXT_GALLERY_DIR))


def load_galleries(folder, use_gpu=False):
    """(image gallery, text gallery or None) as :func:`save_galleries` wrote them."""
    image_gallery = Gallery.load(folder, use_gpu)
    text_folder = os.path.join(folder, TEXT_GALLERY_DIR)
    text_gallery = Gallery.load(text_folder, use_gpu) if os.path.isdir(text_folder) else None
    return image_gallery, text_gallery
