"""Resuming a run: the newest checkpoint that reads, and only for the run that wrote it.

A checkpoint keeps the config it was trained with (``trainer_state.pkl``). A
resume compares it with the config given now, key by key: a change of a key in
:data:`ALLOWED_CHANGES` leaves the continued run equal to an uninterrupted one
(up to what the change asks for) and is applied and logged; any other change
(batch, accumulation, seed, data, views and loss, frozen towers, model, ...)
breaks the exact resume and is refused with the list of changed keys, unless
``Train.force_resume`` is set. A change in the number of ranks is refused
always: data positions are per rank.
"""
import os

from ..checkpoint.state import CheckpointReadError
from ..checkpoint.training import load_checkpoint, resume_candidates
from ..config import default_config, dump_config, plain_config
from ..registry import ConfigError

# Keys (or whole sections) that do not change what the steps compute, or only as asked:
# the schedule's length, logging, checkpointing, evaluation, threads, the bad-record policy, and the
# mixing of the final model (checkpoints keep the fine-tuned weights).
ALLOWED_CHANGES = (
    "Global.output_dir", "Global.device", "Global.num_threads", "Global.pretrained",
    "Train.max_steps", "Train.log_every", "Train.save_every", "Train.eval_every", "Train.keep_checkpoints",
    "Train.resume", "Train.force_resume", "Train.wise_ft_alpha",
    "Data.val", "Data.num_workers", "Data.on_error", "Eval", "Preprocess",
)
SHOWN_VALUE = 60  # characters of a changed value in a message


def flatten(config, prefix=""):
    """{dotted key: value} of nested dicts; lists and scalars are values."""
    if not isinstance(config, dict) or not config:
        return {prefix: config}
    flat = {}
    for key, value in config.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def changed_keys(before, after):
    """{dotted key: (before, after)} of the keys whose values differ (a missing key is None).

    A key of a fixed section that ``before`` lacks was added to the configs after its checkpoint
    was written: it counts at its default, which keeps the behaviour of the version that wrote it.
    """
    old, new = flatten(plain_config(before)), flatten(plain_config(after))
    added = {key: value for key, value in flatten(default_config()).items() if key not in old}
    old = {**added, **old}
    return {key: (old.get(key), new.get(key)) for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)}


def is_allowed(key):
    return any(key == allowed or key.startswith(allowed + ".") for allowed in ALLOWED_CHANGES)


def describe(changes):
    def show(value):
        text = repr(value)
        return text if len(text) <= SHOWN_VALUE else text[: SHOWN_VALUE - 3] + "..."

    return ", ".join(f"{key} ({show(old)} -> {show(new)})" for key, (old, new) in changes.items())


def check_resumable(config, path, state, world_size, log):
    """Refuse a resume that cannot continue the run in ``path``; log the changes it applies."""
    if state["world_size"] != world_size:
        raise ConfigError(
            "Train.resume", f"{path} was written by {state['world_size']} ranks, this run has {world_size}: "
            "data positions are per rank, so resume with the same number of ranks"
        )
    max_steps = config["Train"]["max_steps"]
    if max_steps <= state["step"]:
        raise ConfigError(
            "Train.max_steps", f"{max_steps} is not above the step of the checkpoint it resumes ({path}, step {state['step']}): "
            "nothing to train; raise it, or start afresh with Train.resume: never"
        )
    if "config" not in state:
        log(f"resume: {path} was written before checkpoints kept their config: the settings are not compared")
        return
    changes = changed_keys(state["config"], config)
    breaking = {key: change for key, change in changes.items() if not is_allowed(key)}
    if breaking and not config["Train"]["force_resume"]:
        raise ConfigError(
            "Train.resume", f"{path} was trained with other settings, which an exact resume needs: {describe(breaking)}; "
            "restore them, train into another Global.output_dir, or set Train.force_resume: true to continue with them changed"
        )
    if changes:
        log(f"resume: changed since the checkpoint: {describe(changes)}" + (" (forced)" if breaking else ""))


def resume(trainer, out_dir, train_cfg, log):
    """Restore the newest checkpoint that reads; with ``auto``, unreadable ones are skipped and named."""
    setting = train_cfg["resume"]
    for path in resume_candidates(out_dir, setting):
        try:
            loaded = load_checkpoint(path)
        except CheckpointReadError as err:
            if setting != "auto":
                raise
            log(f"resume: skipped {path}: {err}")
            continue
        check_resumable(trainer.config, path, loaded[3], trainer.world_size, log)
        trainer.restore(path, loaded)
        return path
    return None


def write_run_config(config, out_dir, resumed_step=None):
    """``config.yaml`` for a run from the start; a resume writes its own beside it, never over it."""
    if resumed_step is None:
        path = os.path.join(out_dir, "config.yaml")
    else:
        stem, n = os.path.join(out_dir, f"config.resume_step_{resumed_step:06d}"), 1
        path = f"{stem}.yaml"
        while os.path.exists(path):  # a second resume from the same checkpoint
            n += 1
            path = f"{stem}-{n}.yaml"
    dump_config(config, path)
    return path
