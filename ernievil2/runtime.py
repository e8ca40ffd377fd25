"""CPU runtime set-up, applied when ``ernievil2`` is imported and before Paddle loads.

Why: Paddle's CPU matmuls run in its bundled MKL. Left alone, MKL follows
``OMP_NUM_THREADS`` (pinned to 1 in many containers) and, on AMD processors,
takes a generic code path far below the vector units' rate (docs/benchmarks.md
measured 45 GFLOP/s as run by default against 204-234 with two threads and the
vendor switch, on a 2-core EPYC). Both are read from the environment when MKL
initialises, so they must be in place before ``import paddle``.

What is set, each only when the user has not set it already:
- ``MKL_NUM_THREADS``: the cores this process may use (affinity and cgroup quota);
- ``MKL_DEBUG_CPU_TYPE`` on AMD processors: 7 (the AVX-512 kernels) where the CPU has
  AVX-512, else 5 (the AVX2 kernels); MKL 2020 and older honour it, newer ones ignore it;
- ``OMP_NUM_THREADS=1``: Paddle's own OpenMP loops (element-wise ops) run on a
  second OpenMP runtime beside MKL's; two runtimes both spinning on every core
  slowed the matmuls about 3x here, so Paddle's loops stay single-threaded.
``Global.num_threads`` (or :func:`configure` with ``num_threads``) overrides the
thread count, also after Paddle has loaded.

And one allocator setting, made in-process through ``mallopt`` (glibc only):
freed memory is kept for reuse. Paddle's CPU allocator asks glibc for every
tensor; blocks of a megabyte and more came straight from the kernel (``mmap``)
and went back on ``free``, so every activation and gradient of a training step
was page-faulted in afresh: an element-wise op on a [8, 197, 3072] tensor spent
three quarters of its time in page faults (docs/benchmarks.md, "Training
step"). Memory freed now stays in the process for the next tensor; the peak is
unchanged, the resident size no longer shrinks between steps. Left alone when
the user tunes glibc's malloc (any ``MALLOC_*_`` variable or ``GLIBC_TUNABLES``)
or sets ``ERNIEVIL2_KEEP_FREED_MEMORY=0``.
"""
import ctypes
import math
import os
import sys

_CHOSEN = {}
_USER_SET = {}
_MALLOC = {}
_MKL = {}

# glibc's mallopt parameters, and mallopt's largest value (a C int): a trim threshold
# beyond any step's working set.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
TRIM_THRESHOLD = (1 << 31) - 1
KEEP_FREED_MEMORY = "ERNIEVIL2_KEEP_FREED_MEMORY"


def available_cores():
    """Cores this process may run on: its affinity mask, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return max(1, cores)


def _cgroup_quota():
    """CPUs granted by a cgroup v2 (``cpu.max``) or v1 (``cfs_quota_us``) limit, or None."""
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", encoding="ascii") as f:
            quota = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us", encoding="ascii") as f:
            period = int(f.read())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def _cpuinfo_field(name):
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_vendor():
    return _cpuinfo_field("vendor_id") or "unknown"


def cpu_flags():
    """The instruction-set flags of the first CPU (``/proc/cpuinfo``), empty where unknown."""
    return frozenset((_cpuinfo_field("flags") or "").split())


# MKL's Skylake-server kernels use these; Zen 4 and later have them.
AVX512_SKX = frozenset({"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"})
# MKL_DEBUG_CPU_TYPE values: 5 selects the AVX2 kernels, 7 the AVX-512 (Skylake-server) ones.
MKL_CPU_TYPE_AVX2, MKL_CPU_TYPE_AVX512 = "5", "7"


def mkl_cpu_type(vendor, flags):
    """The MKL kernels an AMD CPU can run, as ``MKL_DEBUG_CPU_TYPE``; None for other vendors.

    On AMD, Paddle's MKL otherwise takes its generic path. With AVX-512 the Skylake-server
    kernels ran a 2-core Zen 5 at 375-415 GFLOP/s against 200-215 with the AVX2 ones
    (fp32, 2048 cubed and the base model's shapes; docs/benchmarks.md).
    """
    if vendor != "AuthenticAMD":
        return None
    return MKL_CPU_TYPE_AVX512 if AVX512_SKX <= flags else MKL_CPU_TYPE_AVX2


def cpu_environment(environ, cores, vendor, flags=frozenset()):
    """The variables to add to ``environ`` (pure: what :func:`configure` would set)."""
    wanted = {"MKL_NUM_THREADS": str(cores), "OMP_NUM_THREADS": "1"}
    cpu_type = mkl_cpu_type(vendor, flags)
    if cpu_type:
        wanted["MKL_DEBUG_CPU_TYPE"] = cpu_type
    return {key: value for key, value in wanted.items() if key not in environ}


def configure(num_threads=None, environ=None):
    """Set the CPU variables (once per process) and, given ``num_threads``, the matmul thread count.

    Returns the settings in force, for the log.
    """
    environ = os.environ if environ is None else environ
    if not _CHOSEN:
        for key in ("MKL_NUM_THREADS", "OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE"):
            if key in environ:
                _USER_SET[key] = environ[key]
        _CHOSEN.update(cpu_environment(environ, available_cores(), cpu_vendor(), cpu_flags()))
        environ.update(_CHOSEN)
        _MALLOC["keep_freed_memory"] = keep_freed_memory(environ)
    if num_threads is not None:
        if not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"Global.num_threads must be a positive integer, got {num_threads!r}")
        environ["MKL_NUM_THREADS"] = str(num_threads)
        _CHOSEN["MKL_NUM_THREADS"] = str(num_threads)
        if "paddle" in sys.modules:
            # MKL has read its variables already: tell it directly.
            sys.modules["paddle"].base.core.set_num_threads(num_threads)
    return settings()


def matmul_threads():
    """The matmul thread count in force: ``MKL_NUM_THREADS``, as the user or :func:`configure` set it."""
    value = os.environ.get("MKL_NUM_THREADS")
    return int(value) if value else available_cores()


def _paddle_mkl():
    """Paddle's bundled MKL (``libmklml_intel.so``) as loaded in this process, or None."""
    paddle = sys.modules.get("paddle")
    if "mkl" not in _MKL and paddle is not None:
        path = os.path.join(os.path.dirname(paddle.__file__), "libs", "libmklml_intel.so")
        try:
            _MKL["mkl"] = ctypes.CDLL(path) if os.path.exists(path) else None
        except OSError:
            _MKL["mkl"] = None
    return _MKL.get("mkl")


def restore_matmul_threads():
    """Give MKL back :func:`matmul_threads` threads; returns the count, or None without Paddle's MKL.

    A Paddle Inference predictor leaves MKL on one thread once it has run: in the same
    process, dygraph matmuls then ran at half speed (107 against 205 GFLOP/s on 2
    cores). Only MKL's count is set back; Paddle's ``set_num_threads`` would also
    raise its OpenMP threads, which this module keeps at one.
    """
    mkl = _paddle_mkl()
    if mkl is None:
        return None
    threads = matmul_threads()
    mkl.MKL_Set_Num_Threads(threads)
    return threads


def malloc_left_to_user(environ):
    """Why the allocator is left alone (the user tunes it, or opted out), or None."""
    if environ.get(KEEP_FREED_MEMORY, "1") == "0":
        return f"{KEEP_FREED_MEMORY}=0"
    tuned = sorted(k for k in environ if (k.startswith("MALLOC_") and k.endswith("_")) or k == "GLIBC_TUNABLES")
    return f"user sets {', '.join(tuned)}" if tuned else None


def keep_freed_memory(environ):
    """Have glibc keep freed blocks for reuse instead of returning them to the kernel; returns what was done.

    No block is mapped on its own (``M_MMAP_MAX=0``: raising the mmap threshold
    instead stops at 32 MiB, below a multi-view step's largest activations), and
    the heap is not shrunk after each free (trim threshold 2 GiB).
    """
    reason = malloc_left_to_user(environ)
    if reason:
        return f"left alone ({reason})"
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "left alone (not glibc)"
    if not (mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return "left alone (mallopt refused)"
    return "freed memory kept (no separate mmaps, no trimming)"


def settings():
    """``{variable: (value, 'set by ernievil2' | 'user')}`` for the variables this module manages."""
    out = {key: (value, "user") for key, value in _USER_SET.items()}
    out.update({key: (value, "ernievil2") for key, value in _CHOSEN.items()})
    return out


def describe():
    """One log line: the CPU settings and who chose each."""
    late = " (paddle was imported before ernievil2: MKL may not have seen these)" if _PADDLE_FIRST else ""
    parts = [f"{key}={value} ({who})" for key, (value, who) in sorted(settings().items())]
    malloc = _MALLOC.get("keep_freed_memory", "not configured")
    return f"cpu runtime: {available_cores()} cores, {cpu_vendor()}; " + ", ".join(parts) + f"; malloc: {malloc}" + late


VERBOSE_START = "ERNIEVIL2_VERBOSE_START"
# Start-up lines that say nothing about the user's work: Paddle's warning that ccache (a C++
# compiler cache, for building custom operators) is missing, and faiss's INFO lines on which
# instruction set it loaded.
STARTUP_WARNINGS = (r"No ccache found",)
STARTUP_LOGGERS = ("faiss.loader", "faiss")


def quiet_start(environ=None):
    """Silence the start-up noise of Paddle and faiss, unless ``ERNIEVIL2_VERBOSE_START=1``; returns whether it did.

    Filters, not redirection: a real warning or error from either still shows.
    """
    environ = os.environ if environ is None else environ
    if environ.get(VERBOSE_START, "0") == "1":
        return False
    import logging
    import warnings

    for message in STARTUP_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)
    for name in STARTUP_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    return True


_PADDLE_FIRST = "paddle" in sys.modules
