"""One training step, plain or accumulated, as functions a test can call directly.

Views of one modality go through their tower in one model call: the two image
views as one stacked batch (or one batch per patch keep ratio, when
``Train.patch_keep`` gives them different ones); the caption views (``text_v1``,
``text_v2``: the same ids, two dropout draws) as one stacked batch, joined by
the tag view when it has their length, or followed by it at its own length.
"""
import contextlib

import numpy as np
import paddle
import paddle.distributed as dist

from ..views import IMAGE_VIEWS, TEXT_VIEWS, text_source


def use_tags_as_text(seed, step, probability):
    """Whether the caption views read the tag prompt this step (same answer on every rank)."""
    if probability <= 0:
        return False
    return bool(np.random.default_rng([seed, step, 7]).random() < probability)


def full_precision(x):
    """The loss runs in fp32 (or wider) even when the towers run in half precision."""
    return x.astype("float32") if x.dtype in (paddle.float16, paddle.bfloat16) else x


def image_groups(views, patch_keep=None):
    """The image views of ``views`` grouped by keep ratio: ``[(keep, [view, ...]), ...]``.

    One group per distinct ratio, in the order of each ratio's first view in
    :data:`IMAGE_VIEWS`; a view ``patch_keep`` does not name keeps every patch (1.0).
    """
    groups = {}
    for view in IMAGE_VIEWS:
        if view in views:
            groups.setdefault(float((patch_keep or {}).get(view, 1.0)), []).append(view)
    return list(groups.items())


def view_inputs(batch, views, tags_as_text=False, patch_keep=None):
    """(image views, image input, text views, text input, keep ratios) for ``views``.

    The image input is one stacked batch (and its keep ratio a number) when every
    image view keeps the same share of its patches, else a list with one stack per
    ratio (and a list of ratios); the image views are listed in that order. None
    without image views.
    The text input is one stacked batch when every text view has the same length,
    else a list with one stack per length: the caption views read the same ids,
    while the tag view (trimmed to its own longest row by the data pipeline) is
    usually shorter and would otherwise pay for the captions' padding.
    """
    groups = image_groups(views, patch_keep)
    image_names = [view for _, names in groups for view in names]
    stacks = [paddle.concat([batch[view] for view in names]) for _, names in groups]
    keeps = [keep for keep, _ in groups]
    images, keep = (stacks[0], keeps[0]) if len(groups) == 1 else (stacks or None, keeps or 1.0)
    text_names = [v for v in TEXT_VIEWS if v in views]
    if not text_names:
        return image_names, images, text_names, None, keep
    # TEXT_VIEWS lists the caption views before the tag view, so grouping by the
    # array read keeps the views in order.
    groups = {}
    for view in text_names:
        source = text_source(view, tags_as_text)
        groups.setdefault(source, []).append(batch[source])
    if len({group[0].shape[1] for group in groups.values()}) == 1:
        texts = paddle.concat([ids for group in groups.values() for ids in group])
    else:
        texts = [paddle.concat(group) for group in groups.values()]
    return image_names, images, text_names, texts, keep


def encode_views(model, batch, views, tags_as_text=False, autocast=None, patch_keep=None):
    """{view: raw features [B, D]} and the logit scale, from one call of ``model``.

    ``patch_keep``: {image view: share of its patches the image tower sees}
    (``Train.patch_keep``); views it does not name, or name with 1, see them all.
    """
    image_names, images, text_names, texts, keep = view_inputs(batch, views, tags_as_text, patch_keep)
    # Without patch dropout the model is called as it always was.
    dropout = {} if keep == 1 else {"patch_keep": keep}
    with autocast() if autocast else contextlib.nullcontext():
        out = model(images=images, input_ids=texts, **dropout)
    features = {}
    for names, key in ((image_names, "image"), (text_names, "text")):
        if names:
            for name, part in zip(names, paddle.split(full_precision(out[key]), len(names))):
                features[name] = part
    return features, full_precision(out["logit_scale"])


def train_step(model, loss_fn, batch, views, tags_as_text=False, autocast=None, scaler=None, loss_kwargs=None, patch_keep=None):
    """Forward, loss and backward for one batch; returns the loss terms (tensors).

    ``loss_kwargs`` go to the loss as they are (ids, the momentum queue's batch);
    ``patch_keep`` as in :func:`encode_views`.
    """
    features, logit_scale = encode_views(model, batch, views, tags_as_text, autocast, patch_keep)
    terms = loss_fn(features, logit_scale, **(loss_kwargs or {}))
    (scaler.scale(terms["loss"]) if scaler else terms["loss"]).backward()
    return terms


def accumulated_step(
    model, loss_fn, micro_batches, views, tags_as_text=False, autocast=None, no_sync=None, loss_kwargs=None, patch_keep=None
):
    """One step over several micro-batches whose negatives are all of them together.

    1. Encode every micro-batch without gradient, remembering the RNG state
       before each, and stack the features.
    2. Compute the loss on the stacked features (leaves with gradient) and
       backpropagate to them: the gradient of the full-batch loss per feature.
    3. Re-encode each micro-batch with gradient under the same RNG state (same
       dropout masks and kept patches, so the same features) and backpropagate the matching
       slice of those feature gradients into the towers.
    The parameter gradients equal those of one step on the whole batch, at the
    memory of one micro-batch plus the cached features. Gradients are not
    synchronised across ranks here (``no_sync``); the caller does it once.
    """
    states, cached = [], []
    with paddle.no_grad():
        for batch in micro_batches:
            states.append(paddle.get_rng_state())
            cached.append(encode_views(model, batch, views, tags_as_text, autocast, patch_keep)[0])
    stacked = {}
    for view in cached[0]:
        leaf = paddle.concat([c[view] for c in cached]).detach()
        leaf.stop_gradient = False
        stacked[view] = leaf
    base = model._layers if isinstance(model, paddle.DataParallel) else model
    with no_sync() if no_sync else contextlib.nullcontext():
        terms = loss_fn(stacked, base.logit_scale(), **(loss_kwargs or {}))
        terms["loss"].backward()
        sizes = [len(next(iter(c.values()))) for c in cached]
        offsets = np.cumsum([0] + sizes)
        for i, batch in enumerate(micro_batches):
            paddle.set_rng_state(states[i])
            features, _ = encode_views(model, batch, views, tags_as_text, autocast, patch_keep)
            names = list(features)
            grads = [stacked[v].grad[offsets[i] : offsets[i + 1]] for v in names]
            paddle.autograd.backward([features[v] for v in names], grads)
    return terms


def average_gradients(parameters, world_size, group=None):
    """All-reduce (mean) the gradients of ``parameters`` in one flat buffer per dtype."""
    if world_size == 1:
        return
    by_dtype = {}
    for param in parameters:
        if param.grad is not None:
            by_dtype.setdefault(param.grad.dtype, []).append(param)
    for params in by_dtype.values():
        flat = paddle.concat([p.grad.reshape([-1]) for p in params])
        dist.all_reduce(flat, group=group)
        flat = flat / world_size
        offset = 0
        for p in params:
            size = int(np.prod(p.grad.shape))
            p.grad.set_value(flat[offset : offset + size].reshape(p.grad.shape))
            offset += size


def batch_to_tensors(batch):
    return {k: paddle.to_tensor(v) for k, v in batch.items()}
