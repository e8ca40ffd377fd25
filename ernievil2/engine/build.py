"""From a config to a ready :class:`~ernievil2.engine.trainer.Trainer` (distributed set-up included)."""
import os
import tempfile

import paddle
import paddle.distributed as dist
from paddle.base.unique_name import UniqueNameGenerator

from .. import runtime
from ..checkpoint import load_pretrained
from ..checkpoint.interpolate import remove_final_model
from ..checkpoint.training import check_free_space, clean_temporary, estimate_checkpoint_bytes
from ..config import check_named_files
from ..data.augment import TrainTransform
from ..data.image_ops import EvalTransform
from ..data.pipeline import TrainStream, describe_spec
from ..data.tokenizer import build_tokenizer
from ..losses.distill import check_teacher_source
from ..losses.loss import build_loss, check_temperature
from ..losses.momentum import MomentumQueue
from ..models import build_model
from ..models.tower import TowerCapabilityError, capability
from ..registry import ConfigError
from ..views import TAG_VIEW, image_view_count
from .optim import build_optimizer
from .resume import resume, write_run_config
from .teacher import build_teacher
from .trainer import Trainer, make_eval_fn


def init_distributed():
    """(rank, world size); starts the collective environment when launched on several ranks."""
    world = int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))
    if world > 1:
        from paddle.distributed import fleet

        fleet.init(is_collective=True)
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_logger(rank, path=None):
    """Rank 0 prints and appends to ``path``; other ranks stay quiet."""
    def log(message):
        if rank != 0:
            return
        print(message, flush=True)
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.write(message + "\n")

    return log


def wrap_for_parallel(model, optimizer, train_cfg):
    """DataParallel through fleet, or group sharding (stage 1: optimizer state, 2: + gradients)."""
    from paddle.distributed import fleet

    stage = train_cfg["sharding_stage"]
    if stage == 0:
        return fleet.distributed_model(model), optimizer
    # The config loader has checked the stage's values and its accumulation; the device is known only here.
    if not paddle.is_compiled_with_cuda():
        raise ValueError("Train.sharding_stage needs GPUs (a CUDA build of Paddle); use 0 on CPU")
    from paddle.distributed.sharding import group_sharded_parallel

    model, optimizer, _ = group_sharded_parallel(model, optimizer, level="os" if stage == 1 else "os_g")
    return model, optimizer


def check_patch_keep(model, patch_keep, source=None):
    """``Train.patch_keep`` below 1 needs an image tower that can drop patches: else a ConfigError naming the view."""
    for view, keep in (patch_keep or {}).items():
        if keep < 1:
            try:
                capability(model.visual, "forward_patch_dropout", "drop patches")
            except TowerCapabilityError as err:
                raise ConfigError(f"Train.patch_keep.{view}", f"{err} (it has no patch tokens); use 1.0", source) from None


def prepare_output_dir(out_dir, source=None):
    """Create ``out_dir`` and make sure a file can be written there, before anything is built:
    a ConfigError naming it otherwise (a file in its place, a read-only file system, no permission)."""
    if os.path.isfile(out_dir):
        raise ConfigError("Global.output_dir", f"{out_dir} is a file, not a folder", source)
    try:
        os.makedirs(out_dir, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".write-test-", dir=out_dir)
        os.close(handle)
        os.remove(probe)
    except OSError as err:
        raise ConfigError("Global.output_dir", f"cannot write into {out_dir}: {err.strerror}", source) from None


def check_wise_ft_source(config, source=None):
    """``Train.wise_ft_alpha`` reads ``Global.pretrained`` again at the end: it must not lie in the output
    folder, whose final model and checkpoints this run replaces."""
    pretrained, out_dir = config["Global"]["pretrained"], config["Global"]["output_dir"]
    if config["Train"]["wise_ft_alpha"] is None:
        return
    inside = os.path.commonpath([os.path.realpath(pretrained), os.path.realpath(out_dir)]) == os.path.realpath(out_dir)
    if inside:
        raise ConfigError("Train.wise_ft_alpha", f"mixes with Global.pretrained ({pretrained}), which lies in Global.output_dir "
                          f"({out_dir}), whose weights this run replaces; copy it elsewhere or train into another folder", source)


def build_trainer(config):
    source = config.get("_source_")
    if config["Data"]["train"] is None:
        raise ConfigError("Data.train", "not given: training needs data", source)
    if config["Loss"] is None:
        raise ConfigError("Loss", "not given: training needs a loss", source)
    try:
        check_teacher_source(config["Loss"], config["Global"]["pretrained"])
    except ConfigError as err:
        raise err.located(source) from None
    check_named_files(config)
    rank, world = init_distributed()
    out_dir = config["Global"]["output_dir"]
    prepare_output_dir(out_dir, source)
    check_wise_ft_source(config, source)
    log = rank_logger(rank, os.path.join(out_dir, "train.log"))
    runtime.configure(config["Global"]["num_threads"])
    log(runtime.describe())
    seed = config["Global"]["seed"]

    # Paddle names parameters (and, at the first step, the optimizer's moments) from per-process
    # counters, and a checkpoint's optimizer state is keyed by those names. The trainer's own
    # counters give every run the names of a fresh process, so a checkpoint resumes whatever
    # the process built before (a second run, a notebook, a test session).
    names = UniqueNameGenerator()
    with paddle.utils.unique_name.guard(names):
        paddle.seed(seed)  # identical initial weights on every rank
        model = build_model(config["Arch"], check_temperature(config["Loss"].get("temperature")))
        if config["Train"]["recompute"]:
            try:
                model.set_grad_checkpointing()
            except TowerCapabilityError as err:
                raise ConfigError("Train.recompute", str(err), config.get("_source_")) from None
        check_patch_keep(model, config["Train"]["patch_keep"], config.get("_source_"))
        if config["Global"]["pretrained"]:
            load_pretrained(model, config["Global"]["pretrained"])
            log(f"loaded weights from {config['Global']['pretrained']}")
        paddle.seed(seed + rank)  # different dropout per rank
        train = config["Train"]
        global_batch = train["batch_size"] * train["accum_steps"] * world
        loss_fn = build_loss(config["Loss"], rank, world, global_batch)
        needs = loss_fn.needs
        teacher = None if needs.teacher is None else build_teacher(config, needs.teacher, log)
        if not needs.logit_scale:
            # No term reads it: untrained (DataParallel would wait for its gradient), kept in the weights.
            model.contrastive_loss_mm.temperature_b.stop_gradient = True
            log("the InfoNCE temperature is not used by any loss term: frozen")
        momentum = None if needs.momentum is None else MomentumQueue(model, needs.momentum, model.embed_dim, needs.ids, world)
        optimizer = build_optimizer(model, config["Optimizer"], loss_fn)
    train_model = model
    if world > 1:
        train_model, optimizer = wrap_for_parallel(model, optimizer, config["Train"])

    n_params = sum(int(p.size) for p in model.parameters())
    n_train = sum(int(p.size) for p in model.parameters() if not p.stop_gradient)
    log(f"model: {n_params / 1e6:.2f}M parameters ({n_train / 1e6:.2f}M trained); rank {rank} of {world}")
    log(f"loss views: {', '.join(sorted(needs.views))}")

    tokenizer = build_tokenizer(config)
    views = needs.views
    data = config["Data"]
    stream = TrainStream(
        data["train"],
        tokenizer,
        TrainTransform(config["Augment"]),
        train["batch_size"],
        image_views=image_view_count(views),
        need_tags=TAG_VIEW in views or train["tag_as_text_prob"] > 0,
        tag_prompt=data["tag_prompt"],
        tag_separator=data["tag_separator"],
        rank=rank,
        world=world,
        seed=seed,
        shuffle_buffer=data["shuffle_buffer"],
        num_workers=data["num_workers"],
        on_error=data["on_error"],
        # The gap is the step's batch: the micro-batches of one step are scored together.
        one_caption_per_image=global_batch // world if data["one_caption_per_image"] else 0,
        replay=data["replay"],
        replay_share=data["replay_share"],
    )
    if data["replay"] is not None:
        log(f"replay: {describe_spec(data['replay'])} at share {data['replay_share']}")
    writer = None
    if rank == 0:
        from visualdl import LogWriter

        writer = LogWriter(logdir=os.path.join(out_dir, "vdl"))
    eval_fn = None
    if data["val"] is not None or config["Eval"]["zeroshot"] is not None:
        eval_fn = make_eval_fn(config, tokenizer, EvalTransform.from_config(config["Preprocess"]), log)
    trainer = Trainer(config, model, loss_fn, optimizer, stream, rank, world, train_model, eval_fn, log, writer, momentum, teacher, names)
    if rank == 0:
        for path in clean_temporary(out_dir):
            log(f"removed {path}, left by an interrupted save")
        remove_final_model(out_dir, log)
        check_free_space(out_dir, estimate_checkpoint_bytes(model, trainer.extra_state()))
    resumed = resume(trainer, out_dir, train, log)
    if rank == 0:
        write_run_config(config, out_dir, trainer.step if resumed else None)
    return trainer

