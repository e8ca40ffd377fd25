"""Data files bundled with the package (vocabularies), and the lookup that finds a named one."""
import os

RESOURCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resources")


def resolve_resource(path, config=None, kind="vocab"):
    """Find a data file: as given, next to the config file, or among the bundled resources."""
    candidates = [path]
    if not os.path.isabs(path):
        if config and config.get("_source_"):
            candidates.append(os.path.join(os.path.dirname(config["_source_"]), path))
        candidates.append(os.path.join(RESOURCES, kind, path))
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"{kind} file {path!r} not found; looked in: {', '.join(candidates)}")
