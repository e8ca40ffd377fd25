"""Zero-shot classification and tagging with a trained dual encoder.

The maths (class embeddings, top-k, confusion, tag selection) is in
:mod:`ernievil2.evaluation.zeroshot`; this module runs the model: it embeds
the prompts of each class, streams images through the image tower batch by
batch (decoded in worker processes, as :mod:`~ernievil2.evaluation.embed`
does), and scores them. Used by ``tools/eval_zeroshot.py``,
``tools/make_tags.py`` and the trainer's periodic evaluation.
"""
import numpy as np
import paddle

from ..data.classes import check_zeroshot_spec, iter_class_folder_images, read_class_folders, read_class_names, read_templates
from ..data.errors import DataError, SkipCounter, split_where
from ..data.parallel import OrderedPool
from ..data.readers import iter_labelled_images
from ..iters import batched
from .embed import Progress, decode_batch, init_decoder
from .zeroshot import class_embeddings, fill_templates, select_tags, softmax, zeroshot_report

PROMPT_BATCH = 256


@paddle.no_grad()
def encode_classes(model, tokenizer, names, templates, batch_size=PROMPT_BATCH):
    """``[classes, dim]`` unit class embeddings: each name in every template, averaged (see zeroshot.class_embeddings)."""
    model.eval()
    prompts = fill_templates(templates, names)
    parts = [model.encode_text(paddle.to_tensor(tokenizer.encode(chunk))).numpy() for chunk in batched(prompts, batch_size)]
    return class_embeddings(np.concatenate(parts).reshape(len(names), len(templates), -1))


@paddle.no_grad()
def image_batches(encode, pool, records, batch_size, counter):
    """``(records whose image decoded, encode(their pixels))`` batch by batch, in input order.

    ``records`` have ``image`` (encoded bytes) and ``image_where``; an image
    that does not decode goes to ``counter`` and is left out of its batch (a
    batch left empty is not yielded). ``encode``: a ``[B, 3, H, W]`` tensor ->
    a numpy array of B rows.
    """
    jobs = ((chunk, ([r.image for r in chunk], [r.image_where for r in chunk])) for chunk in batched(records, batch_size))
    for chunk, (pixels, kept, errors) in pool.map(decode_batch, jobs):
        for err in errors:
            counter.report(err)
        if pixels is not None:
            yield [record for record, ok in zip(chunk, kept) if ok], encode(paddle.to_tensor(pixels))


def _known_labels(records, classes, counter):
    """The records whose label is a class of ``classes``; the others are bad records of the labels file."""
    index = classes.index
    kind = "id" if classes.names != classes.labels else "name"
    for record in records:
        if record.label in index:
            yield record
        else:
            path, line = split_where(record.where)
            counter.report(DataError(path, line, f"unknown label: {record.label!r} is not a class {kind} of {classes.path}"))


def evaluate_zeroshot(model, tokenizer, transform, spec, batch_size=64, num_workers=0, on_error="raise", printer=print, n_confused=10):
    """The zero-shot report (:func:`zeroshot.zeroshot_report`) of the labelled image set ``spec``, and its SkipCounter."""
    check_zeroshot_spec(spec)
    classes = read_class_folders(spec["folder"]) if "folder" in spec else read_class_names(spec["classes"])
    templates = read_templates(spec.get("templates"))
    class_emb = encode_classes(model, tokenizer, classes.names, templates)
    counter = SkipCounter(on_error)
    if "folder" in spec:
        records = iter_class_folder_images(spec["folder"], classes)
    else:
        records = _known_labels(iter_labelled_images(spec["images"], spec["labels"], counter), classes, counter)
    index = classes.index
    embeddings, labels = [], []
    progress = Progress("zero-shot images", printer=printer)
    pool = OrderedPool(num_workers, init_decoder, (transform,))
    try:
        model.eval()
        for good, emb in image_batches(lambda pixels: model.encode_image(pixels).numpy(), pool, records, batch_size, counter):
            embeddings.append(emb)
            labels.extend(index[record.label] for record in good)
            progress.add(len(good))
    finally:
        pool.close()
    if not labels:
        source = spec.get("labels") or spec["folder"]
        raise DataError(source, None, "no image to evaluate: every record was skipped, or there is none")
    scores = np.concatenate(embeddings) @ class_emb.T
    report = zeroshot_report(scores, labels, classes.labels, n_confused)
    report.update(templates=len(templates), skipped=counter.total)
    return report, counter


def zeroshot_tagger(model, tokenizer, vocab, templates):
    """``pixels -> [B, tags]`` probabilities: the softmax, over the vocabulary, of the model's
    logit scale times the image-tag cosine (tags embedded as classes are)."""
    tag_emb = encode_classes(model, tokenizer, vocab.names, templates)
    scale = float(model.logit_scale())
    model.eval()

    def probabilities(pixels):
        return softmax(scale * (model.encode_image(pixels).numpy() @ tag_emb.T))

    return probabilities


def classifier_tagger(net):
    """``pixels -> [B, classes]`` probabilities of a classifier that outputs logits (a PaddleClas backbone)."""
    net.eval()

    def probabilities(pixels):
        return softmax(net(pixels).numpy())

    return probabilities


def load_paddleclas_classifier(name, weights, num_classes):
    """The PaddleClas backbone ``name`` with ``num_classes`` outputs, every weight loaded from ``weights``."""
    from ..checkpoint.state import CheckpointMismatchError, load_state_strict
    from ..models.cnn import PaddleClasTower

    tower = PaddleClasTower(name, out_dim=num_classes)
    try:
        load_state_strict(tower.net, paddle.load(str(weights)), source=str(weights))
    except CheckpointMismatchError as err:
        # A classifier of another size is the likeliest cause: say what it was built with.
        raise CheckpointMismatchError(f"{err}\n({name} was built with {num_classes} classes: one a line of the vocabulary)") from None
    return tower.net


def tag_stream(probabilities, transform, records, labels, top_k=None, threshold=None, batch_size=64, num_workers=0, counter=None):
    """``(record, tags)`` for each record whose image decodes, in input order.

    ``probabilities``: pixels -> ``[B, len(labels)]`` (:func:`zeroshot_tagger`,
    :func:`classifier_tagger`); ``top_k`` and ``threshold`` select as
    :func:`zeroshot.select_tags` does; a tag is written as its label.
    """
    counter = SkipCounter("raise") if counter is None else counter
    pool = OrderedPool(num_workers, init_decoder, (transform,))
    try:
        for good, probs in image_batches(probabilities, pool, records, batch_size, counter):
            for record, indices in zip(good, select_tags(probs, top_k, threshold)):
                yield record, [labels[i] for i in indices]
    finally:
        pool.close()
