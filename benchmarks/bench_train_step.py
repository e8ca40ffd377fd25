"""Training step time on CPU: our single- and multi-view steps against PaddleNLP's ErnieViLModel, with MFU.

    python -m benchmarks.bench_train_step                         # base, batch 8: several minutes; run it alone
    python -m benchmarks.bench_train_step --arch tiny --repeats 2 # quick check of the whole chain
    python -m benchmarks.bench_train_step --only ours_single paddlenlp_single --rounds 3  # settle one ratio
    python -m benchmarks.bench_train_step --only ours_single ours_multiview ours_multiview_keep50 --repeats 2  # patch dropout

Configurations, each in a fresh child process (so every peak-memory figure is
its own high-water mark), on the same random batch (images ~ N(0, 1), ids =
[CLS] + random pieces + [SEP] + padding, lengths between a third of and the
full text length):

- ``ours, single-view``: ``train_step`` on one image view and one text view
  with a one-pair ``info_nce`` loss term (= the CLIP loss), then the
  AdamW step of ``build_optimizer``.
- ``PaddleNLP, CLIP loss``: ``ErnieViLModel`` (same architecture, our initial
  weights converted with ``official_to_paddlenlp``), symmetric cross-entropy
  on its logits, backward and a plain ``paddle.optimizer.AdamW`` step with the
  same hyper-parameters. Both do the same maths: the child processes report
  eval-mode features of two samples, and the parent checks they agree.
- ``ours, multi-view``: two image views (different pixels), two text views
  (the same ids, two dropout draws) and the intra- and inter-modal pairs of
  ``configs/demo/multiview.yaml``; ``+ tag`` adds the tag view and its pair.
- ``ours, single-view + tag``: ``configs/demo/noisy.yaml``'s table, one image
  view, the caption and the tag view: what the tag view costs a single-view step.
- ``ours, multi-view, keep 50%``: the same with patch dropout (``Train.patch_keep``)
  on both image views, 98 of 196 patches at base size; ``image_v2 keep 50%``: on
  the second view only (two image-tower calls, one per ratio).
  Tags are ``--tag-len`` ids long (a prompt and two or three tags), captions
  ``--text-len``, as the data pipeline trims them: the tag view runs at its own
  length.

Each change to the step is measured beside the path it replaced, in the same
run: ``*_stock`` configurations (named in ``--only``; ``ours_single_stock``,
``ours_single_no_malloc``, ...) switch parts back to Paddle's own path
(``STOCK_PARTS``: glibc's allocator defaults, Paddle's Linear backward,
transposed attention heads), one or all at once; the report gives each one's
step-time ratio to the configuration without the switch.

Every configuration runs ``--warmup`` untimed steps (3) and ``--repeats`` timed steps, in
``--rounds`` rounds taken in rotation (fresh child processes each round);
figures are medians over every timed step of every round: wall and CPU
seconds per step, and the part of it spent in the AdamW step and
``clear_grad``. FLOPs are counted analytically (see ``vit_forward_flops`` and
``text_forward_flops``) and tripled for forward + backward. MFU divides the achieved FLOP/s (wall) by the fp32 GEMM ceiling
(the best 2048-cubed fp32 matmul of Paddle, numpy, oneDNN and ONNX Runtime, ``benchmarks/common.py``): the median of samples the same child process takes
before the first timed step and after each one, so in the same time window.
Ratios between configurations are given three ways, since other processes on
the shared cores move each: wall time, CPU time, and wall time normalised by
each run's ceiling; a target counts as met only when all three agree.

Threads: left alone, Paddle runs its math library (MKL) on one thread.
``--threads N`` (default: all cores) gives MKL, which does the matmuls, N
threads through ``MKL_NUM_THREADS`` and keeps ``OMP_NUM_THREADS=1`` for
Paddle's own OpenMP kernels: with ``OMP_NUM_THREADS=2`` here, the first Adam
or AdamW step (a GNU OpenMP kernel, while MKL runs on Intel OpenMP) left every
later 2048-cubed matmul about 3x slower, which would skew both the steps and
the ceiling. Both are set before Paddle loads, in the parent and so in every
child.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]

from benchmarks.common import load_average, print_table  # noqa: E402

# Paddle and the project's modules are imported inside the functions below:
# main() must put the thread count in the environment before Paddle loads.

ARCH_CONFIGS = {"tiny": "configs/tiny_official_fixture.yaml", "base": "configs/ernievil2_base_vit16.yaml"}
RESULT_PREFIX = "RESULT "
SEED = 2024
PROBE_ROWS = 2

SINGLE_PAIRS = [["image_v1", "text_v1", 1.0]]
# The pair table of configs/demo/multiview.yaml, without and with the tag view.
MULTI_PAIRS = [
    ["image_v1", "text_v1", 1.0],
    ["image_v2", "text_v2", 1.0],
    ["image_v1", "image_v2", 0.5],
    ["text_v1", "text_v2", 0.5],
]
TAG_PAIR = ["image_v1", "tag", 0.5]


# What a "stock" configuration switches back to Paddle's own path, one name each:
# "malloc": glibc's default allocator settings (ernievil2/runtime.py keeps freed memory);
# "linear", "heads": Paddle's Linear backward and transposed attention heads (ernievil2/models/cpu_ops.py).
STOCK_PARTS = ("malloc", "linear", "heads")


class Case(NamedTuple):
    label: str
    pairs: list  # our loss's pair table; None for PaddleNLP's own model and loss
    patch_keep: dict = None  # Train.patch_keep: {image view: share of its patches}
    stock: tuple = ()  # parts of STOCK_PARTS switched back, to measure each change beside the old path
    base: str = ""  # the configuration this one differs from by ``stock`` alone

    @property
    def image_keeps(self):
        """The keep ratio of each image view the case encodes."""
        views = sorted({v for pair in (self.pairs or SINGLE_PAIRS) for v in pair[:2] if v.startswith("image")})
        return [(self.patch_keep or {}).get(view, 1.0) for view in views]

    @property
    def views(self):
        """(image views, caption views, tag views)."""
        views = {v for pair in (self.pairs or SINGLE_PAIRS) for v in pair[:2]}
        images = sum(v.startswith("image") for v in views)
        return images, len(views) - images - ("tag" in views), int("tag" in views)


CASES = {
    "ours_single": Case("ours, single-view", SINGLE_PAIRS),
    "paddlenlp_single": Case("PaddleNLP, CLIP loss", None),
    # configs/demo/noisy.yaml's table: what the tag view adds to a single-view step.
    "ours_single_tag": Case("ours, single-view + tag", SINGLE_PAIRS + [TAG_PAIR]),
    "ours_multiview": Case("ours, multi-view", MULTI_PAIRS),
    "ours_multiview_tag": Case("ours, multi-view + tag", MULTI_PAIRS + [TAG_PAIR]),
    "ours_multiview_keep50": Case("ours, multi-view, keep 50%", MULTI_PAIRS, {"image_v1": 0.5, "image_v2": 0.5}),
    "ours_multiview_v2keep50": Case("ours, multi-view, image_v2 keep 50%", MULTI_PAIRS, {"image_v2": 0.5}),
    # Side by side with the old path (not run unless named in --only):
    "ours_single_stock": Case("ours, single-view, stock", SINGLE_PAIRS, stock=STOCK_PARTS, base="ours_single"),
    "ours_single_no_malloc": Case("ours, single-view, stock malloc", SINGLE_PAIRS, stock=("malloc",), base="ours_single"),
    "ours_single_no_linear": Case("ours, single-view, stock linear", SINGLE_PAIRS, stock=("linear",), base="ours_single"),
    "ours_single_no_heads": Case("ours, single-view, stock heads", SINGLE_PAIRS, stock=("heads",), base="ours_single"),
    "paddlenlp_single_stock": Case("PaddleNLP, CLIP loss, stock malloc", None, stock=("malloc",), base="paddlenlp_single"),
    "ours_multiview_stock": Case("ours, multi-view, stock", MULTI_PAIRS, stock=STOCK_PARTS, base="ours_multiview"),
}
TAG_CASES = ("ours_single_tag", "ours_multiview_tag")  # what --skip-tag leaves out


# --- FLOPs ----------------------------------------------------------------------
def vit_forward_flops(cfg, images, cls_only_last=False, keep=1.0):
    """Forward FLOPs (2 per multiply-add) of the ViT's matmuls for ``images`` images.

    Patch embedding, then per block: fused qkv, attention scores and weighted
    sum (heads x head_dim = width), output projection, the two MLP layers.
    Norms, activations and softmax are left out: they are memory-bound and small.
    ``cls_only_last``: the last block computes the class token's row alone
    (what our tower does; its qkv still covers every token). ``keep``: patch
    dropout; every patch is embedded, the blocks see the class token and the kept ones.
    """
    from ernievil2.models.vit import kept_patch_count

    patches = (cfg["img_size"] // cfg["patch_size"]) ** 2
    tokens, width = kept_patch_count(patches, keep) + 1, cfg["embed_dim"]
    hidden = int(width * cfg["mlp_ratio"])
    patch_embed = patches * cfg.get("in_chans", 3) * cfg["patch_size"] ** 2 * width

    def block(rows):
        return tokens * width * 3 * width + 2 * rows * tokens * width + rows * width * width + 2 * rows * width * hidden

    blocks = (cfg["depth"] - 1) * block(tokens) + block(1 if cls_only_last else tokens)
    return 2 * images * (patch_embed + blocks)


def text_forward_flops(cfg, texts, length, cls_only_last=False):
    """Forward FLOPs of the ERNIE tower's matmuls: q, k, v, o, scores, weighted sum, FFN per layer; the pooler.

    Padding positions are computed like any other (the mask only biases the scores).
    ``cls_only_last``: the last block computes the [CLS] row alone (k and v still cover every token).
    """
    width, inter = cfg["hidden_size"], cfg["intermediate_size"]

    def block(rows):
        return (2 * rows + 2 * length) * width * width + 2 * rows * length * width + 2 * rows * width * inter

    blocks = (cfg["num_layers"] - 1) * block(length) + block(1 if cls_only_last else length)
    return 2 * texts * (blocks + width * width)


def train_step_flops(arch, case, batch, text_len, tag_len):
    """Backward is about twice the forward (gradients for inputs and for weights): 3x forward in all."""
    _, caption_views, tag_views = case.views
    ours = case.pairs is not None  # PaddleNLP's towers run the last block on every token
    forward = (
        sum(vit_forward_flops(arch["image_tower"], batch, ours, keep) for keep in case.image_keeps)
        + caption_views * text_forward_flops(arch["text_tower"], batch, text_len, ours)
        + tag_views * text_forward_flops(arch["text_tower"], batch, tag_len, ours)
    )
    return 3 * forward


# --- child process: one configuration ----------------------------------------------
def vm_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def make_inputs(batch, image_size, text_len, tag_len, vocab_size, seed):
    """Two image views (different pixels), caption ids and tag ids, as numpy arrays.

    Rows are [CLS] + pieces + [SEP] + padding, between a third of and the full
    length; the first row is full, so that after the pipeline's trimming the
    captions are ``text_len`` long and the tags ``tag_len``.
    """
    import numpy as np

    rng = np.random.default_rng(seed)

    def ids(length):
        out = np.zeros((batch, length), dtype=np.int64)
        for row in range(batch):
            pieces = length - 2 if row == 0 else int(rng.integers(length // 3, length - 1))
            out[row, 0], out[row, pieces + 1] = 1, 2
            out[row, 1 : pieces + 1] = rng.integers(5, vocab_size - 1, pieces)
        return out

    def images():
        return rng.standard_normal((batch, 3, image_size, image_size)).astype(np.float32)

    return {"image_v1": images(), "image_v2": images(), "text": ids(text_len), "tag": ids(tag_len)}


def our_setup(config, model, inputs, case):
    """(step, probe) for our model: ``train_step`` + AdamW from ``build_optimizer``."""
    import paddle.nn.functional as F

    from ernievil2.engine.optim import build_optimizer
    from ernievil2.engine.steps import batch_to_tensors, train_step
    from ernievil2.losses import build_loss

    loss_fn = build_loss({"terms": [{"name": "info_nce", "pairs": case.pairs}]})
    optimizer = build_optimizer(model, config["Optimizer"])
    batch = batch_to_tensors(inputs)

    def step():
        terms = train_step(model, loss_fn, batch, loss_fn.needs.views, patch_keep=case.patch_keep)
        middle = time.perf_counter()
        optimizer.step()
        optimizer.clear_grad()
        return {"optimizer": time.perf_counter() - middle, "loss": float(terms["loss"])}

    def probe():
        out = model(images=batch["image_v1"][:PROBE_ROWS], input_ids=batch["text"][:PROBE_ROWS])
        return F.normalize(out["image"], axis=-1), F.normalize(out["text"], axis=-1)

    return step, probe


def clip_loss(logits_per_text):
    """Symmetric cross-entropy over in-batch pairs: the plain CLIP loss."""
    import paddle
    import paddle.nn.functional as F

    labels = paddle.arange(logits_per_text.shape[0], dtype="int64")
    return (F.cross_entropy(logits_per_text, labels) + F.cross_entropy(logits_per_text.t(), labels)) / 2


def paddlenlp_model(arch, state):
    """PaddleNLP's ErnieViLModel holding ``state`` (PaddleNLP names, from ``official_to_paddlenlp``)."""
    import paddle
    from paddlenlp.transformers import ErnieViLConfig, ErnieViLModel

    from ernievil2.checkpoint.paddlenlp import paddlenlp_config_from_arch

    model = ErnieViLModel(ErnieViLConfig(**paddlenlp_config_from_arch(arch)))
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    got = {k: list(v.shape) for k, v in state.items()}
    assert got == expected, f"converted weights do not fit ErnieViLModel: {sorted(set(got) ^ set(expected))[:10]}"
    model.set_state_dict(state)
    # ErnieModel's init resets every text LayerNorm to eps 1e-12; put back the
    # configured (official) value, so both models compute the same function.
    for name, layer in model.named_sublayers():
        if name.startswith("text_model") and isinstance(layer, paddle.nn.LayerNorm):
            layer._epsilon = arch["text_tower"]["epsilon"]
    return model


def paddlenlp_setup(config, state, inputs):
    """(step, probe) for PaddleNLP's model: its forward, the CLIP loss on its logits, plain AdamW."""
    import paddle
    import paddle.nn.functional as F

    model = paddlenlp_model(config["Arch"], state)
    model.train()
    opt = config["Optimizer"]
    optimizer = paddle.optimizer.AdamW(
        learning_rate=opt["lr"], parameters=model.parameters(), beta1=opt["beta1"], beta2=opt["beta2"],
        epsilon=opt["epsilon"], weight_decay=opt["weight_decay"],
        grad_clip=paddle.nn.ClipGradByGlobalNorm(opt["grad_clip"]) if opt["grad_clip"] else None,
    )
    images, ids = paddle.to_tensor(inputs["image_v1"]), paddle.to_tensor(inputs["text"])

    def step():
        out = model(input_ids=ids, pixel_values=images, return_dict=True)
        loss = clip_loss(out.logits_per_text)
        loss.backward()
        middle = time.perf_counter()
        optimizer.step()
        optimizer.clear_grad()
        return {"optimizer": time.perf_counter() - middle, "loss": float(loss)}

    def probe():
        image = model.get_image_features(pixel_values=images[:PROBE_ROWS])
        text = model.get_text_features(input_ids=ids[:PROBE_ROWS])
        return F.normalize(image, axis=-1), F.normalize(text, axis=-1)

    return model, step, probe


def eval_probe(model, probe):
    """Eval-mode (no dropout) features of the first samples, to check both models compute the same function."""
    import paddle

    model.eval()
    with paddle.no_grad():
        image, text = probe()
    model.train()
    return {"image": image.numpy().tolist(), "text": text.numpy().tolist()}


def timed_steps(step, repeats, warmup):
    """``warmup`` untimed steps, then ``repeats`` timed ones, each followed by a GEMM ceiling sample.

    Warm-up takes several steps: the allocator's heap grows to the step's working set over the
    first three or so (the base single-view step page-faulted 690k, 380k and 44k times in its
    first three steps, taking 14.1, 10.9 and 5.6 s, then none, in 5.0 s), and a training run
    lives in the state after that. Taking the ceiling between the steps puts it in the same
    time window as they are, so MFU compares like with like while other processes come and go
    on the shared cores. Returns (warm-up steps' figures, per-step records, ceiling samples in
    GFLOP/s).
    """
    import resource

    from benchmarks.common import gemm_gflops

    warm = [step() for _ in range(warmup)]
    ceilings = [gemm_gflops(repeats=3)[0]]
    records = []
    for _ in range(repeats):
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        wall, cpu = time.perf_counter(), time.process_time()
        figures = step()
        records.append({**figures, "wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu, "load": load_average(),
                        "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults})
        ceilings.append(gemm_gflops(repeats=3)[0])
    return warm, records, ceilings


def run_case(name, args):
    """Measure one configuration in this process; returns the figures as a dict."""
    import paddle

    from ernievil2.checkpoint.paddlenlp import official_to_paddlenlp
    from ernievil2.config import load_config
    from ernievil2.models import build_model, cpu_ops

    case = CASES[name]
    cpu_ops.use(**{part: part not in case.stock for part in cpu_ops.ENABLED})
    config = load_config(str(REPO / ARCH_CONFIGS[args.arch]))
    arch = config["Arch"]
    inputs = make_inputs(args.batch, arch["image_tower"]["img_size"], args.text_len, args.tag_len, arch["text_tower"]["vocab_size"], SEED)
    if case.pairs is None:
        import paddlenlp  # noqa: F401  (imported before the baseline RSS, like paddle)
    baseline_kib = vm_kib("VmRSS")
    paddle.seed(SEED)  # the same initial weights in every child
    if case.pairs is None:
        # Our model only lends its weights; it is freed before PaddleNLP's is built.
        state = official_to_paddlenlp(build_model(arch).state_dict())
        model, step, probe = paddlenlp_setup(config, state, inputs)
        del state
    else:
        model = build_model(arch)
        model.train()
        step, probe = our_setup(config, model, inputs, case)
    features = eval_probe(model, probe)
    load_start = load_average()
    warm, records, ceilings = timed_steps(step, args.repeats, args.warmup)
    return {
        "case": name,
        **{k: [r[k] for r in records] for k in ("wall", "cpu", "optimizer", "faults")},
        "gemm": ceilings,
        "losses": [w["loss"] for w in warm] + [r["loss"] for r in records],
        "load": [load_start] + [r["load"] for r in records],
        "peak_kib": vm_kib("VmHWM"),
        "baseline_kib": baseline_kib,
        "probe": features,
    }


# --- parent process: run the children and report ----------------------------------
def pooled(runs):
    """One configuration's child runs (one per round) as medians over every timed step and ceiling sample."""
    merged = {k: [x for run in runs for x in run[k]] for k in ("wall", "cpu", "optimizer", "gemm", "load", "faults")}
    return {
        **{k: statistics.median(merged[k]) for k in ("wall", "cpu", "optimizer", "gemm", "faults")},
        "steps": len(merged["wall"]),
        "gemm_range": [min(merged["gemm"]), max(merged["gemm"])],
        "load": merged["load"],
        "losses": runs[0]["losses"],
        "peak_kib": max(run["peak_kib"] for run in runs),
        "baseline_kib": runs[0]["baseline_kib"],
        "probe": runs[0]["probe"],
    }


def run_child(name, args):
    command = [
        sys.executable, "-m", "benchmarks.bench_train_step", "--child", name, "--arch", args.arch, "--batch", str(args.batch),
        "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--text-len", str(args.text_len), "--tag-len", str(args.tag_len), "--threads", str(args.threads),
    ]
    print(f"running {CASES[name].label} (load {load_average():.2f}) ...", flush=True)
    # glibc's allocator is set when the child imports ernievil2: the opt-out must be in its environment.
    env = {**os.environ, "ERNIEVIL2_KEEP_FREED_MEMORY": "0" if "malloc" in CASES[name].stock else "1"}
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
    results = [line[len(RESULT_PREFIX):] for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode or not results:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"{name}: child process failed (exit code {proc.returncode})")
    return json.loads(results[-1])


def probe_difference(a, b):
    import numpy as np

    return max(float(np.abs(np.array(a[k]) - np.array(b[k])).max()) for k in ("image", "text"))


def print_results(results, arch, args):
    rows = []
    for name, r in results.items():
        flops = train_step_flops(arch, CASES[name], args.batch, args.text_len, args.tag_len)
        achieved = flops / r["wall"] / 1e9
        image_views, caption_views, tag_views = CASES[name].views
        low, high = r["gemm_range"]
        rows.append([
            CASES[name].label, f"{image_views}+{caption_views}" + (f"+{tag_views} tag" if tag_views else ""), f"{r['wall']:.2f}", f"{r['cpu']:.2f}",
            f"{r['optimizer']:.2f}", f"{flops / 1e9:,.1f}", f"{achieved:.1f}", f"{r['gemm']:.0f} ({low:.0f}-{high:.0f})",
            f"{achieved / r['gemm']:.0%}", f"{r['faults']:,.0f}", f"{r['peak_kib'] / 2**20:.2f} ({r['baseline_kib'] / 2**20:.2f})",
            " ".join(f"{x:.1f}" for x in r["load"]),
        ])
    print_table(
        ["configuration", "views img+txt", "step s", "step CPU s", "of which AdamW s", "GFLOP/step", "GFLOP/s",
         "GEMM GFLOP/s median (range)", "MFU", "page faults per step", "peak RSS GiB (after imports)", "load avg per step"],
        rows,
    )
    print()
    for name, r in results.items():
        print(f"{CASES[name].label}: losses {', '.join(f'{x:.4f}' for x in r['losses'])}")


def print_ratio(label, ours, base, target=None):
    """Wall, CPU and ceiling-normalised (wall x GEMM GFLOP/s, i.e. GEMM-seconds of work) step-time ratios.

    The normalised ratio cancels, to first order, a change in how much of the
    machine other processes left between the two child processes' runs.
    """
    ratios = {
        "wall": ours["wall"] / base["wall"],
        "CPU": ours["cpu"] / base["cpu"],
        "normalised by the GEMM ceiling": ours["wall"] * ours["gemm"] / (base["wall"] * base["gemm"]),
    }
    verdict = ""
    if target is not None:
        met = sum(r <= target for r in ratios.values())
        verdict = f" -> target <= {target}: " + ("met" if met == 3 else "NOT met" if met == 0 else f"inconclusive (met on {met} of 3)")
    print(f"{label}: " + ", ".join(f"{k} {r:.2f}" for k, r in ratios.items()) + verdict)


def print_comparisons(results, arch, args):
    """The targets (issue 11, 14): ours at most 0.75x PaddleNLP's step, multi-view at most 2.1x single-view (1.5x keeping 50% of the patches)."""
    single = results["ours_single"]
    if "paddlenlp_single" in results:
        theirs = results["paddlenlp_single"]
        print_ratio("ours single-view / PaddleNLP", single, theirs, 0.75)
        difference = probe_difference(single["probe"], theirs["probe"])
        print(f"  same function: eval-mode features of ours and PaddleNLP differ by at most {difference:.1e}")
        assert difference < 1e-4, "the two models do not compute the same function; the comparison is void"
    single_flops = train_step_flops(arch, CASES["ours_single"], args.batch, args.text_len, args.tag_len)
    targets = (("ours_single_tag", None), ("ours_multiview", 2.1), ("ours_multiview_tag", None), ("ours_multiview_keep50", 1.5), ("ours_multiview_v2keep50", None))
    for name, target in targets:
        if name in results:
            flops_ratio = train_step_flops(arch, CASES[name], args.batch, args.text_len, args.tag_len) / single_flops
            print_ratio(f"{CASES[name].label} / single-view (FLOPs ratio {flops_ratio:.2f})", results[name], single, target)
    for name, case in CASES.items():
        if case.stock and name in results and case.base in results:
            print_ratio(f"{CASES[case.base].label} / {case.label} (the change's speed-up is 1 / this)", results[case.base], results[name])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=sorted(ARCH_CONFIGS), default="base")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--text-len", type=int, default=48, help="caption ids per row, [CLS] and [SEP] included")
    parser.add_argument("--tag-len", type=int, default=16, help="tag-view ids per row (prompt + two or three tags)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps after the warm-up steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (the heap settles over about three)")
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="run the configurations this many times in rotation; medians pool every round's steps",
    )
    parser.add_argument("--only", nargs="+", choices=sorted(CASES), help="these configurations only")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="MKL (matmul) threads")
    parser.add_argument("--skip-paddlenlp", action="store_true")
    parser.add_argument("--skip-tag", action="store_true", help="leave out the configurations with the tag view")
    parser.add_argument("--child", choices=sorted(CASES), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # Before Paddle loads: it and its math library read these once (see the module docstring).
    os.environ["MKL_NUM_THREADS"] = str(args.threads)
    os.environ["OMP_NUM_THREADS"] = "1"
    if args.child:
        print(RESULT_PREFIX + json.dumps(run_case(args.child, args)), flush=True)
        return
    from ernievil2.config import load_config

    arch = load_config(str(REPO / ARCH_CONFIGS[args.arch]))["Arch"]
    names = [n for n in CASES if not (args.skip_paddlenlp and n == "paddlenlp_single") and not (args.skip_tag and n in TAG_CASES)]
    # The stock configurations run only when asked for by name.
    names = [n for n in names if (n in args.only if args.only else not CASES[n].stock)]
    if "ours_single" not in names:
        raise SystemExit("every ratio is to 'ours_single': keep it in --only")
    print(
        f"arch {args.arch}, batch {args.batch}, text length {args.text_len} (tags {args.tag_len}), {args.threads} MKL threads, "
        f"{args.warmup} warm-up + {args.repeats} timed steps per configuration and round, {args.rounds} round(s) in rotation, medians"
    )
    # Rotation (A B C, A B C, ...) spreads a change in the machine's load over every configuration.
    runs = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            runs[name].append(run_child(name, args))
    results = {name: pooled(runs[name]) for name in names}
    print()
    print_results(results, arch, args)
    print()
    print_comparisons(results, arch, args)


if __name__ == "__main__":
    main()
