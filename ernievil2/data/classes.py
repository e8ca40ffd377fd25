"""Class-name, tag-vocabulary and prompt-template files for zero-shot classification and tagging.

A class-names file (a tag vocabulary has the same form) holds one class a line,
either ``name`` or ``id<TAB>name``; every line has an id or none does. The name
is what the prompts say; the id, when given, is what a labels file uses (the
name otherwise). A templates file holds one prompt a line with one ``{}`` where
the name goes. Blank lines are ignored in both. Errors are :class:`DataError`
naming the file and line. Formats: docs/data_format.md.
"""
import dataclasses
import os
from typing import Dict, Tuple

from ..resource_files import resolve_resource
from .errors import DataError
from .readers import IMAGE_EXTENSIONS, UTF8_BOM, LabelledImage

SLOT = "{}"
# What a zero-shot set is made of (Eval.zeroshot, tools/eval_zeroshot.py): three files, or a folder
# holding a sub-folder of images per class; templates may be left out.
ZEROSHOT_KEYS = ("images", "labels", "classes", "folder", "templates")
REQUIRED_ZEROSHOT_KEYS = ("images", "labels", "classes")
DEFAULT_TEMPLATES = "templates_zh.txt"


@dataclasses.dataclass(frozen=True)
class ClassList:
    """Class names in file order, the label (id, or the name itself) of each, and its line."""

    path: str
    names: Tuple[str, ...]
    labels: Tuple[str, ...]
    lines: Tuple[int, ...]

    @property
    def index(self) -> Dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}


def _lines(path):
    """``(1-based line, text)`` of the non-blank lines of a small UTF-8 text file."""
    with open(path, "rb") as f:
        data = f.read()
    for line_no, raw in enumerate(data.removeprefix(UTF8_BOM).split(b"\n"), start=1):
        raw = raw.removesuffix(b"\r")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(path, line_no, f"not UTF-8: byte 0x{raw[err.start]:02x} at byte {err.start + 1} of the line") from None
        if text.strip():
            yield line_no, text


def read_class_names(path) -> ClassList:
    """The classes of ``path``; raises DataError on an empty file, a mixed file, an empty or repeated name or id."""
    names, labels, first_line, with_ids = [], [], {}, None
    for line_no, text in _lines(path):
        fields = text.split("\t")
        if len(fields) > 2:
            raise DataError(path, line_no, f"wrong column count: found {len(fields)}, expected 1 (name) or 2 (id, name)")
        has_id = len(fields) == 2
        if with_ids is None:
            with_ids = has_id
        elif has_id != with_ids:
            expected = "id<TAB>name" if with_ids else "a name alone"
            raise DataError(path, line_no, f"mixed lines: the first line was {expected}, every line must be")
        label, name = (fields[0].strip(), fields[1].strip()) if has_id else (fields[0].strip(), fields[0].strip())
        if not label:
            raise DataError(path, line_no, "empty class id")
        if not name:
            raise DataError(path, line_no, "empty class name")
        kind = "id" if has_id else "name"
        if label in first_line:
            raise DataError(path, line_no, f"repeated class {kind} {label!r} (first on line {first_line[label]})")
        first_line[label] = line_no
        names.append(name)
        labels.append(label)
    if not names:
        raise DataError(path, None, "no classes: the file is empty")
    return ClassList(str(path), tuple(names), tuple(labels), tuple(first_line.values()))


def read_class_folders(root) -> ClassList:
    """The classes of a folder per class: each sub-folder's name is a class name (sorted)."""
    if not os.path.isdir(root):
        raise DataError(root, None, "not a folder: a zero-shot folder holds one sub-folder of images per class")
    names = tuple(sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))))
    if not names:
        raise DataError(root, None, "no class folders: a zero-shot folder holds one sub-folder of images per class")
    return ClassList(str(root), names, names, tuple(0 for _ in names))


def iter_class_folder_images(root, classes: ClassList):
    """Labelled images of a folder per class, class by class, files sorted (searched recursively)."""
    for name in classes.names:
        for folder, dirs, files in os.walk(os.path.join(root, name)):
            dirs.sort()
            for file in sorted(f for f in files if f.lower().endswith(IMAGE_EXTENSIONS)):
                path = os.path.join(folder, file)
                with open(path, "rb") as f:
                    yield LabelledImage(path, f.read(), name, path, path)


def read_templates(path=None):
    """Prompt templates of ``path``, or the default Chinese set shipped in ernievil2/resources/zeroshot/."""
    if path is None:
        path = resolve_resource(DEFAULT_TEMPLATES, kind="zeroshot")
    templates = []
    for line_no, text in _lines(path):
        text = text.strip()
        if text.count(SLOT) != 1:
            raise DataError(path, line_no, f"a template needs exactly one {SLOT} for the class name, found {text.count(SLOT)}: {text!r}")
        templates.append(text)
    if not templates:
        raise DataError(path, None, "no templates: the file is empty")
    return tuple(templates)


def check_zeroshot_spec(spec):
    """Raise ValueError naming the key when ``spec`` is not ``{images, labels, classes[, templates]}`` of paths."""
    if not isinstance(spec, dict):
        raise ValueError(f"expected a mapping like {{images: ..., labels: ..., classes: ...}}, got {spec!r}")
    for key in spec:
        if key not in ZEROSHOT_KEYS:
            raise ValueError(f"unknown key {key!r}; allowed keys: {', '.join(ZEROSHOT_KEYS)}")
    if "folder" in spec:
        mixed = [key for key in REQUIRED_ZEROSHOT_KEYS if key in spec]
        if mixed:
            raise ValueError(f"give 'folder' (a folder per class) or images, labels and classes, not both (also: {', '.join(mixed)})")
    for key in () if "folder" in spec else REQUIRED_ZEROSHOT_KEYS:
        if key not in spec:
            raise ValueError(f"missing key {key!r} (the {key} file; or 'folder', a folder per class)")
    for key, value in spec.items():
        if not (isinstance(value, str) and value) and not (key == "templates" and value is None):
            raise ValueError(f"{key!r} must be a file path, got {value!r}")
