"""Tokens per second with the kernels users run: llama.cpp on a GGUF file, bitsandbytes' CPU layers.

llama.cpp (llama-cpp-python, ``THREADS`` threads) on a GGUF file refquant wrote:

    pp  = n_prompt / t_pp,   t_pp: one ``eval`` of n_prompt random token ids from an empty KV cache
    tg  = n_gen / t_tg,      t_tg: n_gen one-token ``eval`` calls, greedy, after a short prompt

as llama-bench measures ``-p 512`` and ``-n``: prompt processing and generation apart. Each
figure is the best (shortest time) of ``repeats`` runs: on a shared machine the least
disturbed run is the closest to what the kernel can do; the load average is recorded next
to it. llama.cpp runs in a child process (a libggml-base another module loaded into this
one would satisfy libllama's dependency by soname and break it; tests/test_gguf_file.py).

bitsandbytes (``Linear4bit`` NF4, ``Linear8bitLt`` LLM.int8()) against torch ``Linear`` in
float32 and bfloat16, with the same weights, shapes and batch: the block linears of the first
``stack_blocks`` blocks (7 per Llama block) applied one after the other to

    pp: a batch of n_prompt token activations,   tg: one token's activation, n_gen times

(no attention, norms or head: a comparison of the layers, not a whole model's tokens/s).

    Speed(kernel, prompt tok/s, generation tok/s, load, missing)  — ``missing`` says why a
    kernel has no figure on this machine ("" when measured); its figures are then NaN.

Example:
    >>> ticks = iter([0.0, 2.0, 2.0, 3.0, 3.0, 3.5])      # three runs: 2 s, 1 s, 0.5 s
    >>> best_of(lambda: None, repeats=3, timer=lambda: next(ticks))
    0.5

Ref: llama.cpp tools/llama-bench (pp / tg tests); bitsandbytes bitsandbytes/nn/modules.py
(Linear4bit, Linear8bitLt), bitsandbytes/backends/cpu.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import time
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

__all__ = ["Speed", "SpeedProtocol", "PROTOCOL", "QUICK_PROTOCOL", "BNB_KINDS", "best_of", "load_average",
           "machine", "unavailable", "llama_cpp_speed", "linear_stack_speed", "ratio", "versions"]

PROMPT_TOKENS = 512   # llama-bench's default prompt test, -p 512
GEN_TOKENS = 64       # generated tokens per run
REPEATS = 3           # best of 3
THREADS = 2           # llama.cpp n_threads / n_threads_batch, torch.set_num_threads
SHORT_PROMPT = "The capital of France is"  # what generation starts from
CHILD_TIMEOUT_S = 600  # one llama.cpp measurement in its child process
PROMPT_SEED = 0        # the random prompt token ids (llama-bench also times random tokens)


class SpeedProtocol(NamedTuple):
    """What one speed measurement does: tokens, repeats, threads, blocks of the bitsandbytes stack."""

    n_prompt: int = PROMPT_TOKENS
    n_gen: int = GEN_TOKENS
    repeats: int = REPEATS
    threads: int = THREADS
    stack_blocks: int = 8  # 8 SmolLM2 blocks: 113 MB of float32 weights, beyond a 32 MiB L3 cache

    def describe(self) -> str:
        return (f"prompt processing of {self.n_prompt} tokens and generation of {self.n_gen}, best of "
                f"{self.repeats}, {self.threads} threads")


PROTOCOL = SpeedProtocol()
QUICK_PROTOCOL = SpeedProtocol(n_prompt=128, n_gen=16, stack_blocks=2)  # --quick: a quarter of the tokens


class Speed(NamedTuple):
    """One kernel's figures: tokens per second (NaN when ``missing`` says why there are none)."""

    kernel: str
    prompt: float = math.nan
    generation: float = math.nan
    load: float = math.nan  # 1-minute load average (``uptime``'s first figure) as the measurement began
    missing: str = ""

    @property
    def ok(self) -> bool:
        return not self.missing


def unavailable(kernel: str, why: str) -> Speed:
    """A kernel that cannot run here: no figures, the reason kept."""
    return Speed(kernel, missing=why)


def load_average() -> float:
    """The 1-minute load average of this machine (what ``uptime`` prints first)."""
    return float(os.getloadavg()[0])


def best_of(fn: Callable[[], Any], repeats: int = REPEATS, timer: Callable[[], float] = time.perf_counter) -> float:
    """The shortest of ``repeats`` timed calls of ``fn``, in the timer's units (seconds)."""
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats: expected a positive integer, got {repeats!r}")
    best = math.inf
    for _ in range(repeats):
        t0 = timer()
        fn()
        best = min(best, timer() - t0)
    return best


def ratio(a: Speed, b: Speed, which: str = "generation") -> float:
    """a's tokens/s over b's for ``which`` ('prompt' or 'generation'); NaN when either is missing."""
    if which not in ("prompt", "generation"):
        raise ValueError(f"which: expected 'prompt' or 'generation', got {which!r}")
    return getattr(a, which) / getattr(b, which) if a.ok and b.ok else math.nan


def machine() -> str:
    """The CPU's model name and core count, e.g. 'AMD EPYC, 2 cores (x86_64)'."""
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    return f"{name}, {os.cpu_count()} cores ({platform.machine()})"


def versions() -> str:
    """The kernels' package versions, as installed ('not installed' for a missing one)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for package in ("llama-cpp-python", "bitsandbytes", "torch"):
        try:
            out.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            out.append(f"{package} not installed")
    return ", ".join(out)


def _check_protocol(protocol: SpeedProtocol) -> None:
    for field in SpeedProtocol._fields:
        value = getattr(protocol, field)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"protocol.{field}: expected a positive integer, got {value!r}")


# ---------------------------------------------------------------------------------------
# llama.cpp
# ---------------------------------------------------------------------------------------

def llama_cpp_speed(path: str, kernel: str = "", protocol: SpeedProtocol = PROTOCOL,
                    timeout: float = CHILD_TIMEOUT_S) -> Speed:
    """llama.cpp's prompt and generation tokens/s on the GGUF file ``path``, in a child process.

    A missing llama-cpp-python, or a file llama.cpp refuses, is a Speed with ``missing`` saying so.
    """
    _check_protocol(protocol)
    kernel = kernel or f"llama.cpp {os.path.basename(path)}"
    if importlib.util.find_spec("llama_cpp") is None:
        return unavailable(kernel, "llama-cpp-python is not installed (pip install llama-cpp-python)")
    if not os.path.isfile(path):
        raise ValueError(f"path: expected a GGUF file, got {path!r}")
    load = load_average()
    cmd = [sys.executable, "-m", "refquant.speed", path, "--prompt", str(protocol.n_prompt),
           "--gen", str(protocol.n_gen), "--repeats", str(protocol.repeats), "--threads", str(protocol.threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return unavailable(kernel, f"llama.cpp did not finish within {timeout:.0f} s")
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        return unavailable(kernel, f"llama.cpp failed on this file: {last}")
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    return Speed(kernel, figures["prompt"], figures["generation"], load)


def _llama_cpp_figures(path: str, n_prompt: int, n_gen: int, repeats: int, threads: int) -> dict:
    """(In the child process.) {'prompt': tok/s, 'generation': tok/s} of llama.cpp on ``path``."""
    import llama_cpp

    # n_batch = n_ubatch = n_prompt: the prompt goes through in one batch, as llama-bench's pp test
    llm = llama_cpp.Llama(model_path=path, n_ctx=n_prompt + n_gen + 64, n_batch=n_prompt, n_ubatch=n_prompt,
                          n_threads=threads, n_threads_batch=threads, verbose=False)
    rng = np.random.default_rng(PROMPT_SEED)
    prompt = [int(t) for t in rng.integers(0, llm.n_vocab(), n_prompt)]
    start = list(llm.tokenize(SHORT_PROMPT.encode("utf-8"), add_bos=True, special=False))

    def process_prompt():
        llm.reset()  # an empty KV cache: positions restart at 0
        llm.eval(prompt)

    def next_token() -> int:
        # greedy, from the last position's logits (llm.scores holds none without logits_all)
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        return int(np.argmax(logits))

    def generate():
        token = next_token()
        for _ in range(n_gen):
            llm.eval([token])
            token = next_token()

    t_pp = best_of(process_prompt, repeats)
    t_tg = math.inf
    for _ in range(repeats):  # the short prompt is evaluated untimed before each timed run
        llm.reset()
        llm.eval(start)
        t_tg = min(t_tg, best_of(generate, 1))
    llm.close()
    return {"prompt": n_prompt / t_pp, "generation": n_gen / t_tg}


# ---------------------------------------------------------------------------------------
# bitsandbytes and torch: a stack of linear layers
# ---------------------------------------------------------------------------------------

# kind -> what runs: the layer and the dtype of the activations it is fed
BNB_KINDS = {
    "float32": "torch Linear, float32",
    "bfloat16": "torch Linear, bfloat16",
    "nf4": "bitsandbytes Linear4bit NF4, blocks of 64, bfloat16 compute",
    "nf4-dq": "bitsandbytes Linear4bit NF4 + double quantization, bfloat16 compute",
    "int8": "bitsandbytes Linear8bitLt (LLM.int8(), threshold 6), bfloat16 activations",
}
LLM_INT8_THRESHOLD = 6.0  # bitsandbytes' and the paper's outlier threshold


@contextlib.contextmanager
def _torch_threads(torch: Any, n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _layer(torch: Any, bnb: Any, W: np.ndarray, kind: str) -> Any:
    """One (out, in) weight as the layer ``kind`` runs it."""
    n_out, n_in = W.shape
    w = torch.from_numpy(np.array(W, dtype=np.float32))  # a writable copy (model weights may be read-only)
    if kind in ("float32", "bfloat16"):
        dtype = torch.float32 if kind == "float32" else torch.bfloat16
        layer = torch.nn.Linear(n_in, n_out, bias=False, dtype=dtype)
        layer.weight = torch.nn.Parameter(w.to(dtype), requires_grad=False)
        return layer
    if kind in ("nf4", "nf4-dq"):
        layer = bnb.nn.Linear4bit(n_in, n_out, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4",
                                  compress_statistics=kind == "nf4-dq")
        layer.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4",
                                         compress_statistics=kind == "nf4-dq", blocksize=64)
        return layer.to("cpu")  # quantizes here
    layer = bnb.nn.Linear8bitLt(n_in, n_out, bias=False, has_fp16_weights=False, threshold=LLM_INT8_THRESHOLD)
    layer.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
    return layer.to("cpu")  # row-wise absmax int8 codes, as LLM.int8() stores W


def linear_stack_speed(weights: Sequence[np.ndarray], kind: str, protocol: SpeedProtocol = PROTOCOL,
                       seed: int = 0) -> Speed:
    """Tokens/s of a stack of linear layers (each (out, in) weight in ``weights``, applied in order
    to its own input width) run as ``kind`` (a key of ``BNB_KINDS``).

    Activations are N(0, 1): no feature reaches LLM.int8()'s outlier threshold, so its mixed
    float16 path does not run (real activations have such columns; the int8 figure is its best case).
    """
    _check_protocol(protocol)
    if kind not in BNB_KINDS:
        raise ValueError(f"kind: expected one of {', '.join(BNB_KINDS)}, got {kind!r}")
    shapes = [tuple(np.shape(W)) for W in weights]
    if not shapes or any(len(s) != 2 or min(s) < 1 for s in shapes):
        raise ValueError(f"weights: expected a non-empty list of 2-D (out, in) matrices, got shapes {shapes}")
    kernel = f"{BNB_KINDS[kind]}: {len(shapes)} linears"
    missing = [p for p in ("torch", *(("bitsandbytes",) if kind not in ("float32", "bfloat16") else ()))
               if importlib.util.find_spec(p) is None]
    if missing:
        return unavailable(kernel, f"{' and '.join(missing)} not installed (pip install {' '.join(missing)})")
    import torch

    bnb = None
    if kind not in ("float32", "bfloat16"):
        import bitsandbytes as bnb
    load = load_average()
    # bitsandbytes' CPU kernels run an OpenMP team of their own: with torch's team spinning
    # beside it on the same 2 cores, an NF4 forward took 15× longer here (0.52 s against 35 ms
    # for 28 linears, one token), so torch keeps 1 thread for the bitsandbytes layers and the
    # kernels' own team takes the cores; the torch layers get ``threads``
    threads = protocol.threads if bnb is None else 1
    dtype = torch.float32 if kind == "float32" else torch.bfloat16
    gen = torch.Generator().manual_seed(seed)
    with _torch_threads(torch, threads), torch.inference_mode():
        layers = [_layer(torch, bnb, np.asarray(W), kind) for W in weights]
        widths = sorted({s[1] for s in shapes})
        x_pp = {n: torch.randn(protocol.n_prompt, n, generator=gen).to(dtype) for n in widths}  # (n_prompt, in)
        x_tg = {n: torch.randn(1, n, generator=gen).to(dtype) for n in widths}  # (1, in)

        def run(x):
            for layer, (_, n_in) in zip(layers, shapes):
                layer(x[n_in])

        def generate():
            for _ in range(protocol.n_gen):
                run(x_tg)

        run(x_tg)  # a first call outside the timing (lazy initialisation, dispatch caches)
        t_pp = best_of(lambda: run(x_pp), protocol.repeats)
        t_tg = best_of(generate, protocol.repeats)
    return Speed(kernel, protocol.n_prompt / t_pp, protocol.n_gen / t_tg, load)


def _main(argv: list[str] | None = None) -> None:
    """The child process of ``llama_cpp_speed``: prints one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m refquant.speed")
    parser.add_argument("path")
    parser.add_argument("--prompt", type=int, default=PROMPT_TOKENS)
    parser.add_argument("--gen", type=int, default=GEN_TOKENS)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--threads", type=int, default=THREADS)
    args = parser.parse_args(argv)
    print(json.dumps(_llama_cpp_figures(args.path, args.prompt, args.gen, args.repeats, args.threads)))


if __name__ == "__main__":
    _main()
