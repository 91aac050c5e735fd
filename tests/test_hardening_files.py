"""Files and commands at the edges: every bad path, every hostile header, one line and exit 2.

Each class of bad input below has one parametrized test over the commands and path
arguments it applies to. Every case runs ``refquant.cli.main`` in-process and asserts:
exit status 2, exactly one line on stderr starting ``refquant COMMAND: error:``, no
traceback, the target untouched (same inode, mode, size and bytes) and nothing new beside
it. Files are tiny GGUFs made with refquant's own writer in ``tmp_path``.

| class                        | made with                                          | policy                                              |
|------------------------------|----------------------------------------------------|-----------------------------------------------------|
| missing                      | a name that does not exist; output in a missing folder | refused: "no such file" / "no such folder"      |
| folder                       | ``tmp_path`` itself                                 | an input: refused; an output file: refused           |
| FIFO                         | ``os.mkfifo``                                       | refused before open() (which would block forever)   |
| character device             | ``os.mknod`` of /dev/null's numbers (1, 3)          | an input: named as a device; an output: refused, never replaced |
| unreadable / unwritable      | a path under a regular file (ENOTDIR); EACCES from ``os.open`` (we run as root: chmod stops nobody) | refused, nothing written |
| disk full                    | ``os.write`` raising ENOSPC midway                  | one line, the old output intact, no temporary left  |
| not GGUF / truncated GGUF    | text bytes; the first half of a valid file          | "not a valid GGUF file: <field> at byte <n>"        |
| killed writer                | a child SIGKILLed after the header is written       | O_TMPFILE: nothing visible; fallback: the next write of the same target removes the stale temporary |
| hostile header               | block_count 2**31-1 in a small file; head_count 0   | refused from the tensor table before any allocation |
| empty selection              | a GGUF with no tensors; --tensors matching nothing  | refused before anything is written                  |

``refquant verify`` takes no path argument; it is covered by tests/test_cli.py.
"""

from __future__ import annotations

import errno
import hashlib
import os
import resource
import signal
import stat
import subprocess
import sys

import numpy as np
import pytest

from refquant import cli
from refquant.gguf import file as gf

VT = gf.ValueType
D_MODEL, N_FF, VOCAB = 8, 16, 256  # the vocabulary: byte-level BPE's 256 byte symbols, no merges


# --------------------------------------------------------------------------- tiny files

def tiny_llama_metadata(n_layer: int = 1, n_head: int = 2, **override) -> dict:
    from tokenizers import pre_tokenizers

    meta = {"general.architecture": "llama", "llama.block_count": n_layer, "llama.embedding_length": D_MODEL,
            "llama.attention.head_count": n_head, "llama.attention.head_count_kv": n_head,
            "llama.feed_forward_length": N_FF, "llama.attention.layer_norm_rms_epsilon": 1e-5,
            "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": sorted(pre_tokenizers.ByteLevel.alphabet()),
            "tokenizer.ggml.merges": []}
    meta.update(override)
    return meta


TYPES = {"tokenizer.ggml.merges": (VT.ARRAY, VT.STRING)}  # an empty list has no element to infer from


def tiny_llama_tensors(n_layer: int = 1, seed: int = 0) -> list:
    """A one-block Llama in F32, rows of 8 or 16 (a few KB)."""
    rng = np.random.default_rng(seed)
    shapes = {"token_embd.weight": (VOCAB, D_MODEL), "output_norm.weight": (D_MODEL,)}
    for i in range(n_layer):
        shapes.update({f"blk.{i}.attn_norm.weight": (D_MODEL,), f"blk.{i}.ffn_norm.weight": (D_MODEL,),
                       f"blk.{i}.attn_q.weight": (D_MODEL, D_MODEL), f"blk.{i}.attn_k.weight": (D_MODEL, D_MODEL),
                       f"blk.{i}.attn_v.weight": (D_MODEL, D_MODEL), f"blk.{i}.attn_output.weight": (D_MODEL, D_MODEL),
                       f"blk.{i}.ffn_gate.weight": (N_FF, D_MODEL), f"blk.{i}.ffn_up.weight": (N_FF, D_MODEL),
                       f"blk.{i}.ffn_down.weight": (D_MODEL, N_FF)})
    return [(n, "F32", s, rng.standard_normal(s).astype(np.float32)) for n, s in shapes.items()]


def write_tiny_llama(path, **override) -> str:
    gf.write(path, tiny_llama_metadata(**override), tiny_llama_tensors(), metadata_types=TYPES)
    return str(path)


def _snapshot(path):
    """What 'untouched' means: (mode, inode, size, sha256 of a regular file) or None if absent."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    digest = None
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
    return st.st_mode, st.st_ino, st.st_size, digest


def _listing(folder):
    try:
        return sorted(os.listdir(folder))
    except OSError:
        return None


class Paths:
    """The files a case needs, in tmp_path: a good model, and bad things of each kind."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.model = write_tiny_llama(tmp_path / "model.gguf")
        self.out_dir = tmp_path / "outputs"
        self.out_dir.mkdir()
        self.output = str(self.out_dir / "q.gguf")

    def bad(self, kind: str) -> str:
        p = self.tmp / f"bad-{kind}"
        if kind == "missing":
            return str(p)
        if kind == "folder":
            p.mkdir()
        elif kind == "fifo":
            os.mkfifo(p)
        elif kind == "device":  # a private /dev/null: a test that replaced it would harm nobody
            os.mknod(p, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        elif kind == "not-gguf":
            p.write_text("these are notes, not a model\n")
        elif kind == "truncated":
            data = open(self.model, "rb").read()
            p.write_bytes(data[: len(data) // 2])
        elif kind == "under-a-file":
            return str(self.tmp / "model.gguf" / "x.gguf")  # ENOTDIR
        elif kind == "missing-folder":
            return str(self.tmp / "no-such-folder" / "x.gguf")
        elif kind == "regular-file":
            p.write_bytes(b"an existing file\n")
        else:
            raise AssertionError(kind)
        return str(p)


@pytest.fixture
def paths(tmp_path):
    return Paths(tmp_path)


@pytest.fixture(autouse=True)
def no_hang():
    """A command blocked in open() on a FIFO fails the test in 10 s instead of hanging it."""
    def expire(signum, frame):
        raise TimeoutError("the command blocked for 10 s")
    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def argv_for(command: str, arg: str, value: str, p: Paths) -> tuple[list[str], str]:
    """(argv, the path that must stay untouched) with ``value`` in argument ``arg``."""
    out = str(p.tmp / "report")
    if command == "inspect":
        return ["inspect", value], value
    if command == "quantize":
        src, dst, imatrix = p.model, p.output, None
        if arg == "input":
            src = value
        elif arg == "output":
            dst = value
        else:
            imatrix = value
        argv = ["quantize", src, dst, "--type", "F16"] + (["--imatrix", imatrix] if imatrix else [])
        return argv, value if arg != "imatrix" else dst
    if command == "report":
        model = value if arg == "--model" else p.model
        out = value if arg == "--out" else out
        return ["report", "--model", model, "--methods", "INT8", "--tokens", "32", "--window", "16",
                "--no-progress", "--out", out], value
    raise AssertionError(command)


def assert_one_line_exit_2(command, argv, watched, capsys, p: Paths):
    folders = {os.path.dirname(watched), str(p.tmp), str(p.out_dir)}
    before = {f: _listing(f) for f in folders}
    watched_before = _snapshot(watched)
    model_before = _snapshot(p.model)
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"refquant {command}: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert _snapshot(watched) == watched_before
    assert _snapshot(p.model) == model_before
    assert {f: _listing(f) for f in folders} == before
    return err


INPUTS = [("inspect", "path"), ("quantize", "input"), ("quantize", "imatrix"), ("report", "--model")]
OUTPUTS = [("quantize", "output"), ("report", "--out")]


# --------------------------------------------------------------------------- one test per class

@pytest.mark.parametrize("command, arg", INPUTS + [("quantize", "output")])
def test_missing(command, arg, paths, capsys):
    kind = "missing-folder" if arg == "output" else "missing"
    argv, watched = argv_for(command, arg, paths.bad(kind), paths)
    err = assert_one_line_exit_2(command, argv, watched, capsys, paths)
    assert "no such" in err


@pytest.mark.parametrize("command, arg", INPUTS + [("quantize", "output")])
def test_folder(command, arg, paths, capsys):
    argv, watched = argv_for(command, arg, paths.bad("folder"), paths)
    err = assert_one_line_exit_2(command, argv, watched, capsys, paths)
    assert "is a directory" in err


@pytest.mark.parametrize("command, arg", INPUTS + OUTPUTS)
def test_fifo(command, arg, paths, capsys):
    argv, watched = argv_for(command, arg, paths.bad("fifo"), paths)
    err = assert_one_line_exit_2(command, argv, watched, capsys, paths)
    assert "is a FIFO" in err


@pytest.mark.parametrize("command, arg", INPUTS + OUTPUTS)
def test_character_device(command, arg, paths, capsys):
    device = paths.bad("device")
    argv, watched = argv_for(command, arg, device, paths)
    err = assert_one_line_exit_2(command, argv, watched, capsys, paths)
    assert "is a character device" in err
    assert stat.S_ISCHR(os.lstat(device).st_mode)  # never replaced by a regular file


@pytest.mark.parametrize("command, arg, how", [
    *[(c, a, "under-a-file") for c, a in INPUTS + OUTPUTS],
    ("quantize", "input", "EACCES"), ("quantize", "output", "EACCES"), ("report", "--out", "EACCES"),
    ("inspect", "path", "EACCES"),
])
def test_unreadable_or_unwritable(command, arg, how, paths, capsys, monkeypatch):
    if how == "under-a-file":
        value = paths.bad("under-a-file")
    else:
        # root ignores permission bits, so permission is denied where the kernel would deny a user
        value = paths.model if arg in ("input", "path") else paths.output if arg == "output" else str(paths.out_dir)
        real_open = os.open
        reading = arg in ("input", "path")
        refused = os.path.abspath(value if arg == "--out" else os.path.dirname(value))

        def deny(path, flags, *a, **k):
            p = os.path.abspath(os.fspath(path))
            if (p == value) if reading else ((p == refused or os.path.dirname(p) == refused)
                                             and flags & (os.O_WRONLY | os.O_RDWR)):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
            return real_open(path, flags, *a, **k)
        monkeypatch.setattr(os, "open", deny)
    argv, watched = argv_for(command, arg, value, paths)
    err = assert_one_line_exit_2(command, argv, watched, capsys, paths)
    assert "Not a directory" in err or "not a folder" in err or "Permission denied" in err


@pytest.mark.parametrize("when", ["write", "fsync"])
def test_disk_full_keeps_the_old_output_and_leaves_no_temporary(when, paths, capsys, monkeypatch):
    """ENOSPC from write() after 256 bytes, or from fsync() (ext4's delayed allocation reports it there)."""
    gf.write(paths.output, {"old": 1}, ())
    enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if when == "write":
        real_write = os.write
        written = [0]

        def write(fd, data):
            if written[0] >= 256:
                raise enospc
            n = real_write(fd, bytes(data)[: 256 - written[0]])
            written[0] += n
            return n
        monkeypatch.setattr(os, "write", write)
    else:
        monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(enospc))
    argv, watched = argv_for("quantize", "output", paths.output, paths)
    err = assert_one_line_exit_2("quantize", argv, watched, capsys, paths)
    assert "No space left on device" in err and paths.output in err


@pytest.mark.parametrize("command, arg", INPUTS)
@pytest.mark.parametrize("kind", ["not-gguf", "truncated"])
def test_not_gguf_or_truncated(command, arg, kind, paths, capsys):
    argv, watched = argv_for(command, arg, paths.bad(kind), paths)
    err = assert_one_line_exit_2(command, argv, watched, capsys, paths)
    assert "GGUF" in err or "imatrix" in err


_CHILD = """
import sys, time
import numpy as np
from refquant.gguf import file as gf
if sys.argv[2] == "fallback":
    gf._USE_O_TMPFILE = False
real = gf._chunks
def chunks(*a, **k):
    gen = real(*a, **k)
    yield next(gen)
    yield next(gen)
    print("midway", flush=True)
    time.sleep(60)
    yield from gen
gf._chunks = chunks
gf.write(sys.argv[1], {"v": 2}, [("w", "F32", (4096,), np.zeros(4096, np.float32)), ("u", "F32", (8,), bytes(32))])
"""


@pytest.mark.parametrize("mode", ["O_TMPFILE", "fallback"])
def test_killed_writer_leaves_nothing_beside_the_target(mode, tmp_path, monkeypatch):
    path = tmp_path / "model.gguf"
    gf.write(path, {"v": 1}, [("w", "F32", (8,), np.ones(8, np.float32))])
    before = _snapshot(path)
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(path), mode], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "midway"
        if mode == "O_TMPFILE":  # mid-write, nothing is visible: the data is in an anonymous inode
            assert os.listdir(tmp_path) == ["model.gguf"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert _snapshot(path) == before
    if mode == "fallback":  # the named temporary outlived its writer; the next write of the target removes it
        assert len(os.listdir(tmp_path)) == 2
        monkeypatch.setattr(gf, "_USE_O_TMPFILE", False)
        gf.write(path, {"v": 3}, ())
        assert gf.read(path).metadata["v"] == 3
    else:
        assert _snapshot(path) == before
    assert os.listdir(tmp_path) == ["model.gguf"]


_MEMORY_LIMIT = 2 * 2**30  # the hostile header must fail in far less; a regression hits MemoryError, not the machine


def _limited():
    resource.setrlimit(resource.RLIMIT_AS, (_MEMORY_LIMIT, _MEMORY_LIMIT))


@pytest.mark.parametrize("override, message", [
    (dict(n_layer=2**31 - 1), "llama.block_count"),
    (dict(n_head=0), "llama.attention.head_count"),
    (dict(n_head=3), "llama.attention.head_count"),            # 8 is not a multiple of 3 heads
    ({"llama.embedding_length": 12}, "token_embd.weight"),       # the header disagrees with the tensors
    ({"llama.block_count": "one"}, "llama.block_count"),
    ({"tokenizer.ggml.merges": ["nospace"]}, "tokenizer.ggml.merges"),
    ({"tokenizer.ggml.bos_token_id": 10**6}, "tokenizer.ggml.bos_token_id"),
])
def test_hostile_header(override, message, tmp_path, capsys):
    """block_count 2**31-1 runs in a fresh process under a 2 GiB address-space limit: code that
    sized an allocation from it would die of MemoryError (a traceback, exit 1), not take the
    machine down. The others run in-process."""
    model = write_tiny_llama(tmp_path / "hostile.gguf", **override)
    assert os.path.getsize(model) < 2**16
    argv = ["report", "--model", model, "--methods", "INT8", "--no-progress", "--out", str(tmp_path / "r")]
    if override.get("n_layer", 0) > 2**20:
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
        proc = subprocess.run([sys.executable, "-m", "refquant.cli", *argv], capture_output=True, text=True,
                              timeout=60, preexec_fn=_limited, env=env)
        code, err = proc.returncode, proc.stderr
    else:
        code, err = cli.main(argv), capsys.readouterr().err
    assert code == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refquant report: error: --model:") and message in lines[0], lines
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", ["quantize", "report"])
def test_empty_selection(command, paths, capsys):
    if command == "quantize":
        empty = str(paths.tmp / "empty.gguf")
        gf.write(empty, tiny_llama_metadata(), (), metadata_types=TYPES)
        argv, watched = ["quantize", empty, paths.output, "--type", "F16"], paths.output
    else:
        argv, watched = argv_for("report", "--model", paths.model, paths)
        argv += ["--tensors", r"^no\.such\.tensor"]
        watched = str(paths.tmp / "report")
    err = assert_one_line_exit_2(command, argv, watched, capsys, paths)
    assert "no tensors" in err or "matches no" in err
