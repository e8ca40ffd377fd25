"""The view vocabulary shared by the loss, the training step and the data pipeline.

A view is one encoding of a sample that a loss term compares with another:

- ``image_v1``, ``image_v2``: two augmentations of the image (batch keys of the same name);
- ``text_v1``, ``text_v2``: the caption through the text tower twice (batch key ``text``;
  the two differ by their dropout draws);
- ``tag``: the object-tag prompt (batch key ``tag``).

A loss says which views it needs; the data pipeline produces only the batch
arrays those views read, and the training step encodes only those views.
"""
IMAGE_VIEWS = ("image_v1", "image_v2")
# The caption views come before the tag view: the training step stacks text views in this order.
TEXT_VIEWS = ("text_v1", "text_v2", "tag")
KNOWN_VIEWS = IMAGE_VIEWS + TEXT_VIEWS
VIEW_MODALITY = {**dict.fromkeys(IMAGE_VIEWS, "image"), **dict.fromkeys(TEXT_VIEWS, "text")}
TAG_VIEW = "tag"
# The momentum queue's keys: the momentum copy encodes these views' inputs.
KEY_VIEWS = {"image": "image_v1", "text": "text_v1"}


def image_view_count(views):
    """How many augmentations of each image the batch carries for ``views`` (``image_v1`` always)."""
    return max((IMAGE_VIEWS.index(view) + 1 for view in views if view in IMAGE_VIEWS), default=1)


def text_source(view, tags_as_text=False):
    """The batch array a text view reads: ``tag`` for the tag view (or every view when tags stand in for captions)."""
    return TAG_VIEW if view == TAG_VIEW or tags_as_text else "text"
