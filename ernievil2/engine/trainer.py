"""The training loop: explicit state in, one step at a time, checkpoints and logs out.

    python tools/train.py -c configs/demo/multiview.yaml
    python -m paddle.distributed.launch --nproc_per_node 8 tools/train.py -c CONFIG
    # multi-node: the same, plus --master HOST:PORT --nnodes N on every node
"""
import json
import os
import resource
import time

import numpy as np
import paddle
import paddle.distributed as dist

from ..checkpoint.interpolate import interpolate_into
from ..checkpoint.state import CheckpointMismatchError, load_state_strict
from ..checkpoint.training import clean_temporary, load_checkpoint, save_checkpoint
from ..config import plain_config
from ..evaluation.classify import evaluate_zeroshot
from ..evaluation.embed import embed_split
from ..evaluation.retrieval import evaluate_multi_gt, evaluate_official, official_table
from ..evaluation.zeroshot import format_report
from ..losses.momentum import current_layout
from .optim import lr_at
from .rendezvous import RankZeroGate
from .steps import accumulated_step, average_gradients, batch_to_tensors, train_step, use_tags_as_text


def peak_rss_mib():
    """This process's resident-set high-water mark (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scales_line(terms, labels):
    """``scale=14.85 sigmoid_scale=10.02 ...`` for the ``{key: label}`` in ``terms``, with a trailing space."""
    return "".join(f"{label}={terms[key]:.2f} " for key, label in labels.items() if key in terms)


def format_duration(seconds):
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Trainer:
    def __init__(
        self,
        config,
        model,
        loss_fn,
        optimizer,
        stream,
        rank=0,
        world_size=1,
        train_model=None,
        eval_fn=None,
        log=print,
        writer=None,
        momentum=None,
        teacher=None,
        names=None,
    ):
        self.config = config
        self.train_cfg, self.opt_cfg = config["Train"], config["Optimizer"]
        self.model = model  # the plain model (checkpoints, evaluation)
        self.train_model = train_model or model  # possibly wrapped for data parallelism
        self.loss_fn, self.optimizer, self.stream = loss_fn, optimizer, stream
        self.rank, self.world_size = rank, world_size
        self.eval_fn, self.log, self.writer = eval_fn, log, writer
        self.momentum = momentum  # the momentum queue's MomentumQueue (EMA key encoder and queues), or None
        self.teacher = teacher  # a distill term's frozen Teacher (engine/teacher.py), or None; never checkpointed
        # The unique-name counters the model was built under (build_trainer; None: fresh ones): the
        # optimizer names its moments from them at the first step, as in a fresh process.
        self.names = names
        self.gate = RankZeroGate(rank, world_size)
        self.needs = loss_fn.needs
        # The model's temperature, as the console shows it when a term reads it, then what the terms log.
        self.log_labels = {"logit_scale": "scale", **loss_fn.logs}
        # Patch dropout of the online model's image views; the momentum encoder sees every patch.
        self.patch_keep = self.train_cfg.get("patch_keep")
        self.step = 0
        self.step_seconds = 0.0  # training time of this run, for the learning curve in eval_history.jsonl
        self.output_dir = config["Global"]["output_dir"]
        self.seed = config["Global"]["seed"]
        self.autocast = self._autocast_factory()
        self.scaler = (
            paddle.amp.GradScaler() if self.train_cfg["amp"] and self.train_cfg["amp_dtype"] == "float16" else None
        )

    def _autocast_factory(self):
        cfg = self.train_cfg
        if not cfg["amp"]:
            return None
        return lambda: paddle.amp.auto_cast(enable=True, dtype=cfg["amp_dtype"], level=cfg["amp_level"])

    # --- one step -----------------------------------------------------------
    def run_step(self, micro_batches):
        """Update the model from ``accum_steps`` micro-batches; returns the logged terms as floats."""
        tags = use_tags_as_text(self.seed, self.step, self.train_cfg["tag_as_text_prob"])
        self.optimizer.set_lr(
            lr_at(self.step, self.opt_cfg["lr"], self.opt_cfg["warmup_steps"], self.train_cfg["max_steps"], self.opt_cfg["min_lr_ratio"])
        )
        # The ids the loss reads (its positives, the queue's mask), over the step's micro-batches.
        loss_kwargs = {kw: paddle.concat([b[key] for b in micro_batches]) for kw, key in self.needs.ids.items()}
        if self.momentum is not None:
            loss_kwargs["momentum"] = self.momentum.keys_for(micro_batches, self.step, tags)
        if self.teacher is not None:
            loss_kwargs["teacher"] = self.teacher.batch_for(micro_batches, tags, self.autocast)
        # The loss's own parameters (the sigmoid term's scale and bias) are outside
        # DataParallel: their gradients are averaged over ranks here.
        synced = [p for p in self.loss_fn.parameters() if not p.stop_gradient]
        if len(micro_batches) == 1:
            terms = train_step(
                self.train_model, self.loss_fn, micro_batches[0], self.needs.views, tags, self.autocast, self.scaler, loss_kwargs, self.patch_keep
            )
        else:
            no_sync = getattr(self.train_model, "no_sync", None)
            terms = accumulated_step(
                self.train_model, self.loss_fn, micro_batches, self.needs.views, tags, self.autocast, no_sync, loss_kwargs, self.patch_keep
            )
            synced += [p for p in self.model.parameters() if not p.stop_gradient]
        average_gradients(synced, self.world_size)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.clear_grad()
        if self.momentum is not None:
            # MoCo order: the loss saw the queue as it stood; now update the keys' encoder and enqueue.
            self.momentum.after_step(self.model)
        self.step += 1
        out = {k: float(v) for k, v in terms.items()}
        if self.needs.logit_scale:
            out["logit_scale"] = float(self.model.logit_scale())
        out["lr"] = self.optimizer.get_lr()
        out["tags_as_text"] = float(tags)
        return out

    # --- state --------------------------------------------------------------
    def trainer_state(self):
        local = {**self.stream.state_dict(), "rng": paddle.get_rng_state()}
        per_rank = [local]
        if self.world_size > 1:
            per_rank = []
            dist.all_gather_object(per_rank, local)
        return {"step": self.step, "ranks": per_rank, "world_size": self.world_size, "config": plain_config(self.config)}

    def extra_state(self):
        """The loss's own parameters and the momentum queue (encoder and queues), beside the model."""
        extra = {"loss": self.loss_fn.state_dict()}
        if self.momentum is not None:
            extra["momentum"] = self.momentum.state_dict()
        return extra

    def save(self):
        state = self.trainer_state()  # a collective: every rank takes part
        return self.gate.alone(lambda: self._write_checkpoint(state))

    def _write_checkpoint(self, state):
        path = save_checkpoint(
            self.output_dir, self.step, self.model, self.optimizer, self.extra_state(), state, self.train_cfg["keep_checkpoints"]
        )
        self.log(f"saved checkpoint {path}")
        return path

    def restore(self, path, loaded=None):
        """Continue from the checkpoint at ``path`` (``loaded``: its contents, if already read)."""
        model_state, opt_state, extra, state = loaded or load_checkpoint(path)
        extra = current_layout(extra)
        load_state_strict(self.model, model_state, source=path)
        self.optimizer.set_state_dict(opt_state)
        self.loss_fn.set_state_dict(extra.get("loss", {}))
        if self.momentum is not None:
            if "momentum" not in extra:
                raise CheckpointMismatchError(f"{path} has no momentum queue, but Loss.terms lists a momentum_queue")
            load_state_strict(self.momentum, extra["momentum"], source=f"{path} (momentum queue)")
        mine = state["ranks"][self.rank]
        self.stream.load_state_dict(mine)
        paddle.set_rng_state(mine["rng"])
        self.step = state["step"]
        self.log(f"resumed from {path} at step {self.step}")

    # --- the loop -----------------------------------------------------------
    def _log_step(self, terms, step_time, started, first_step):
        cfg = self.train_cfg
        samples = self._samples_per_step()
        done = self.step - first_step
        remaining = (time.time() - started) / max(1, done) * (cfg["max_steps"] - self.step)
        if self.writer is not None:
            for key, value in terms.items():
                self.writer.add_scalar(f"train/{key}", value, self.step)
            self.writer.add_scalar("train/samples_per_second", samples / step_time, self.step)
        if self.step % cfg["log_every"] == 0 or self.step == cfg["max_steps"]:
            pairs = " ".join(f"{k.split('/', 1)[1]}={v:.3f}" for k, v in terms.items() if k.startswith("loss/"))
            self.log(
                f"step {self.step}/{cfg['max_steps']} loss={terms['loss']:.4f} {pairs} {scales_line(terms, self.log_labels)}"
                f"lr={terms['lr']:.2e} "
                f"{samples / step_time:.1f} samples/s eta {format_duration(remaining)}"
                + (f" | {self.stream.counter.summary()}" if self.stream.counter.total else "")
            )

    def evaluate(self):
        if self.eval_fn is None:
            return None
        return self.gate.alone(self._evaluate_here)

    def _evaluate_here(self):
        metrics = self.eval_fn(self.model)
        self.model.train()
        self._record_evaluation(metrics)
        if self.writer is not None:
            if "zeroshot" in metrics:
                for key in ("top1", "top5"):
                    self.writer.add_scalar(f"eval_zeroshot/{key}", metrics["zeroshot"][key], self.step)
            for protocol, result in metrics.items():
                if protocol == "zeroshot":
                    continue
                for direction in ("text2image", "image2text", "mean"):
                    for key in ("r1", "r5", "r10", "mean_recall"):
                        self.writer.add_scalar(f"eval_{protocol}/{direction}_{key}", result[direction][key], self.step)
        return metrics

    def train(self):
        try:
            with paddle.utils.unique_name.guard(self.names):
                return self._train()
        finally:
            self.stream.close()
            self._write_skip_report()
            if self.rank == 0:
                clean_temporary(self.output_dir)
            if self.writer is not None:
                self.writer.close()

    def _record_evaluation(self, metrics):
        """One line of ``eval_history.jsonl`` per evaluation: the learning curve, by step and by training time."""
        record = {
            "step": self.step,
            "samples": self.step * self._samples_per_step(),
            "train_seconds": round(self.step_seconds, 3),
            **{protocol: _curve_point(protocol, result) for protocol, result in metrics.items()},
        }
        with open(os.path.join(self.output_dir, "eval_history.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _write_skip_report(self):
        name = "skipped.tsv" if self.world_size == 1 else f"skipped.rank{self.rank}.tsv"
        path = self.stream.counter.write_report(os.path.join(self.output_dir, name))
        if path:
            self.log(f"skip report: {self.stream.counter.total} records listed in {path}")

    def _train(self):
        cfg = self.train_cfg
        self.model.train()
        batches = iter(self.stream)
        first_step, started = self.step, time.time()
        self.step_seconds = 0.0  # waiting for data + computing, without checkpoints and evaluation
        while self.step < cfg["max_steps"]:
            tick = time.time()
            micro = [batch_to_tensors(next(batches)) for _ in range(cfg["accum_steps"])]
            terms = self.run_step(micro)
            if not np.isfinite(terms["loss"]):
                raise FloatingPointError(f"step {self.step}: the loss is {terms['loss']}; lower Optimizer.lr or enable grad_clip")
            self.step_seconds += time.time() - tick
            self._log_step(terms, time.time() - tick, started, first_step)
            if cfg["save_every"] and self.step % cfg["save_every"] == 0 and self.step < cfg["max_steps"]:
                self.save()
            if cfg["eval_every"] and self.step % cfg["eval_every"] == 0 and self.step < cfg["max_steps"]:
                self.evaluate()
        self.save()
        self.log(
            f"trained {self.step - first_step} steps in {format_duration(time.time() - started)}; "
            f"peak memory {peak_rss_mib():.0f} MiB; {self.stream.counter.summary()}"
        )
        if self.rank == 0:
            summary = {
                "steps": self.step - first_step,
                "step_seconds": self.step_seconds,
                "samples_per_second": (self.step - first_step) * self._samples_per_step() / max(self.step_seconds, 1e-9),
                "peak_mib": peak_rss_mib(),
                "skipped_records": self.stream.counter.total,
            }
            with open(os.path.join(self.output_dir, "train_summary.json"), "w", encoding="utf-8") as f:
                json.dump(summary, f, indent=2)
        alpha = cfg.get("wise_ft_alpha")
        if alpha is not None:
            # After the last save: the checkpoints keep the fine-tuned weights, so a resume stays exact.
            self.gate.alone(lambda: interpolate_into(self.model, self.config["Global"]["pretrained"], alpha, self.output_dir, self.log))
        return self.evaluate()

    def _samples_per_step(self):
        return self.train_cfg["batch_size"] * self.train_cfg["accum_steps"] * self.world_size


def _curve_point(protocol, result):
    """What the learning curve keeps of one evaluation: each retrieval direction, or zero-shot accuracy."""
    if protocol == "zeroshot":
        return {key: result[key] for key in ("top1", "top5", "mean_per_class_top1")}
    return {direction: result[direction] for direction in ("text2image", "image2text", "mean")}


def make_eval_fn(config, tokenizer, transform, log=print):
    """Retrieval evaluation on ``Data.val`` (both protocols) and zero-shot classification on
    ``Eval.zeroshot``, each when set; logged as tables, written as JSON."""
    out_dir = config["Global"]["output_dir"]

    def run(model):
        results = evaluate_model(model, config, tokenizer, transform, log, out_dir)
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "eval_metrics.json"), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
        return results

    return run


def evaluate_model(model, config, tokenizer, transform, log=print, report_dir=None):
    """``{"multi_gt", "official" (one caption per image), "zeroshot"}`` of ``model`` on ``Data.val`` and
    ``Eval.zeroshot``, each when set; the tables are logged, skipped records listed in ``report_dir``."""
    spec = config["Data"]["val"]
    eval_cfg = config["Eval"]
    on_error = config["Data"]["on_error"]
    results = {}
    if spec is not None:
        features, counter = embed_split(
            model, spec, tokenizer, transform, eval_cfg["batch_size"], eval_cfg["num_workers"], on_error, printer=log
        )
        results["multi_gt"] = evaluate_multi_gt(features)
        if len(features.text_emb) == len(features.image_emb):
            results["official"] = evaluate_official(features.text_emb, features.image_emb)
        for protocol, metrics in results.items():
            log(f"retrieval ({protocol}, {len(features.text_emb)} texts):\n{official_table(metrics)}")
        if counter.total:
            log(f"evaluation data: {counter.summary()}")
            if report_dir:
                counter.write_report(os.path.join(report_dir, "eval_skipped.tsv"))
    if eval_cfg["zeroshot"] is not None:
        report, counter = evaluate_zeroshot(
            model, tokenizer, transform, eval_cfg["zeroshot"], eval_cfg["batch_size"], eval_cfg["num_workers"], on_error, printer=log
        )
        log(format_report(report))
        if counter.total:
            log(f"zero-shot data: {counter.summary()}")
            if report_dir:
                counter.write_report(os.path.join(report_dir, "eval_zeroshot_skipped.tsv"))
        results["zeroshot"] = report
    return results
