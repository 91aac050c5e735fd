"""The command line end to end: `refquant report --quick` on SmolLM2-135M, `refquant verify`,
--help everywhere, and user mistakes answered in one line.

The report runs on the whole model (a model cut to its first blocks predicts garbage:
its perplexity is in the millions) with only blocks 0 and 1 quantized (--tensors) and one
window of 256 tokens, so that the comparisons below mean something and CI stays fast.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from refquant import cli

N_BLOCKS = 2  # --model test: a GGUF holding the first blocks of SmolLM2-135M


def write_first_blocks(src: str, dst: str, n_blocks: int) -> None:
    """Copy a Llama GGUF keeping only blocks 0..n_blocks-1 (tensors byte for byte, block_count
    changed), with gguf-py's reader and writer."""
    import gguf

    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(dst, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue  # header fields; the writer adds the architecture itself
        value = n_blocks if key == f"{arch}.block_count" else field.contents()
        sub_type = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, field.types[0], sub_type=sub_type)
    for t in reader.tensors:
        if t.name.startswith("blk.") and int(t.name.split(".")[1]) >= n_blocks:
            continue
        writer.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory, smollm2_path):
    path = str(tmp_path_factory.mktemp("model") / f"smollm2-{N_BLOCKS}-blocks.gguf")
    write_first_blocks(smollm2_path, path, N_BLOCKS)
    return path


def refquant(*args: str) -> subprocess.CompletedProcess:
    """The command as a user runs it, in a fresh process."""
    return subprocess.run([sys.executable, "-m", "refquant.cli", *args], capture_output=True, text=True, timeout=900)


# ---------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------

QUICK_CI = ["baseline", "INT8", "NF4", "Q8_0", "Q4_K_M", "Q2_K"]


TENSORS = r"^blk\.[01]\."


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    proc = refquant("report", "--quick", "--tokens", "256", "--window", "256", "--tensors", TENSORS,
                    "--methods", ",".join(QUICK_CI), "--out", str(out))
    return proc, out


def _rows(out) -> dict[str, dict[str, str]]:
    with open(out / "report.csv", newline="") as f:
        return {r["method"]: r for r in csv.DictReader(f)}


def test_report_quick_end_to_end(quick_report):
    """One test, so that under xdist the report runs once (a module fixture is built per worker)."""
    proc, out = quick_report
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["report.csv", "report.md", "report.png"]
    for m in QUICK_CI:
        assert f"| {m} |" in proc.stdout  # the printed table (Markdown when not a terminal)
    assert "Protocol: model SmolLM2-135M-Instruct.Q4_1.gguf" in proc.stdout
    assert "256 tokens" in proc.stdout and "1 non-overlapping windows of 256" in proc.stdout
    assert f"only those matching /{TENSORS}/" in proc.stdout
    assert "methods" in proc.stderr  # the progress display
    with open(out / "report.md") as f:
        assert f.read() in proc.stdout
    with open(out / "report.png", "rb") as f:
        assert f.read(4) == b"\x89PNG"

    _check_quick_values(out)


def _check_quick_values(out):
    rows = _rows(out)
    assert list(rows) == QUICK_CI
    text = ("method", "description", "status", "tensors")
    num = {m: {k: float(v) for k, v in r.items() if k not in text} for m, r in rows.items()}
    assert all(r["status"] == "ok" for r in rows.values())
    assert all(math.isfinite(v) for r in num.values() for v in r.values())
    base = num["baseline"]
    assert base["bits_per_weight"] == 32 and base["rel_error"] == 0 and base["delta_perplexity"] == 0
    # Q8_0: 8.5 bits (a float16 scale per 32 int8 codes) and the baseline's perplexity within 0.5 %
    assert num["Q8_0"]["bits_per_weight"] == pytest.approx(8.5)
    assert abs(num["Q8_0"]["perplexity"] / base["perplexity"] - 1) < 0.005
    # fewer bits cost more: error and perplexity grow from Q8_0 to Q4_K_M to Q2_K
    assert num["Q8_0"]["rel_error"] < num["Q4_K_M"]["rel_error"] < num["Q2_K"]["rel_error"] < 1
    assert num["Q4_K_M"]["perplexity"] < num["Q2_K"]["perplexity"]
    assert num["Q2_K"]["bits_per_weight"] < num["Q4_K_M"]["bits_per_weight"] < num["Q8_0"]["bits_per_weight"]
    # NF4: 4-bit codes + a float32 absmax per 64 = 4.5 bits; INT8: 8 bits + a scale per row
    assert num["NF4"]["bits_per_weight"] == pytest.approx(4.5)
    assert 8 < num["INT8"]["bits_per_weight"] < 8.1
    assert all(num[m]["memory_mb"] < base["memory_mb"] for m in QUICK_CI[1:])
    # bpw is the whole model's (every row the same tensor set): it ranks the rows as MB does
    assert base["model_bits_per_weight"] == 32
    assert sorted(QUICK_CI, key=lambda m: num[m]["memory_mb"]) == sorted(QUICK_CI, key=lambda m: num[m]["model_bits_per_weight"])
    assert {rows[m]["tensors"] for m in QUICK_CI[1:]} == {"14 of 210 block linears"}  # blocks 0 and 1 of 30


def test_report_on_another_gguf(small_gguf, tmp_path):
    """--model: any Llama GGUF (here SmolLM2 cut to its first blocks; its perplexity is huge)."""
    proc = refquant("report", "--model", small_gguf, "--methods", "Q4_0", "--tokens", "256", "--window", "128",
                    "--no-progress", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == ""  # --no-progress
    assert f"Protocol: model smollm2-{N_BLOCKS}-blocks.gguf" in proc.stdout
    rows = _rows(tmp_path)
    assert list(rows) == ["baseline", "Q4_0"] and rows["Q4_0"]["status"] == "ok"
    # Q4_0 blocks (4.5 bits) for the blocks' matrices; the tied token embedding is the output
    # projection to llama.cpp: Q6_K, and Q8_0 (8.5 bits) as its 576-wide rows do not fit 256-blocks
    assert 4.5 < float(rows["Q4_0"]["bits_per_weight"]) < 8.5
    assert rows["Q4_0"]["tensors"] == "block linears + token_embd"
    # every tensor but the float32 norms is quantized here: the whole model has a few more bits per parameter
    assert 0 < float(rows["Q4_0"]["model_bits_per_weight"]) - float(rows["Q4_0"]["bits_per_weight"]) < 0.01


# ---------------------------------------------------------------------------------------
# user mistakes: one line, no traceback, exit status 2
# ---------------------------------------------------------------------------------------

MISTAKES = [
    (["report", "--methods", "Q4_K_M,Q9_9"], "refquant report: error: --methods: unknown method Q9_9"),
    (["report", "--model", "/no/such/file.gguf"], "refquant report: error: --model: no such file"),
    (["report", "--backend", "fortran"], "refquant report: error: argument --backend: invalid choice"),
    (["report", "--tokens", "0"], "refquant report: error: --tokens: expected a positive number"),
    (["report", "--tensors", "blk.(", "--methods", "INT8"], "refquant report: error: --tensors: not a regular expression"),
    (["report", "--methods", "INT8", "--out", "/dev/null/report"], "refquant report: error: --out: cannot write into"),
    (["verify", "--formats", "Q9_9"], "refquant verify: error: --formats: unknown format Q9_9"),
    (["quantize", "/no/such/in.gguf", "out.gguf", "--type", "Q4_K_M"], "refquant quantize: error: input: no such file"),
    (["quantize", "in.gguf", "out.gguf"],
     "refquant quantize: error: --type: required unless --target-bpw or --target-size is given"),
    (["imatrix", "/no/such/file.gguf", "-o", "imatrix.gguf"], "refquant imatrix: error: model: no such file"),
    (["imatrix", "model.gguf"], "refquant imatrix: error: the following arguments are required: -o/--output"),
    (["inspect", "/no/such/file.gguf"], "refquant inspect: error: FILE.gguf: no such file"),
    (["inspect", "/no/such/file.gguf", "--items", "-1"], "refquant inspect: error: --items: expected a count >= 0"),
    (["exercises", "check"], "refquant exercises: error: check: expected the NAME of an exercise"),
    (["exercises", "check", "no_such_exercise"], "refquant exercises: error: "),
    (["finetune", "--r", "0"], "refquant finetune: error: --r: expected a positive number"),
    (["frobnicate"], "refquant: error: argument COMMAND: invalid choice"),
]


def test_every_command_has_a_mistake_below():
    assert {args[0] for args, _ in MISTAKES} == set(cli.COMMANDS) | {"frobnicate"}


@pytest.mark.parametrize("args, message", MISTAKES)
def test_user_mistakes_are_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(cli.main(args))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_report_rejects_a_file_that_is_not_gguf(tmp_path, capsys):
    bad = tmp_path / "notes.gguf"
    bad.write_text("not a model")
    assert cli.main(["report", "--model", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("refquant report: error: --model:") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_errors_from_a_fresh_process_have_no_traceback():
    proc = refquant("report", "--model", "missing.gguf")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "refquant report: error: --model: no such file 'missing.gguf'"
    assert "Traceback" not in proc.stderr


def test_quantize_rejects_an_unknown_type_and_a_bad_file_leaving_no_output(small_gguf, tmp_path, capsys):
    out = tmp_path / "out.gguf"
    assert cli.main(["quantize", small_gguf, str(out), "--type", "Q9_9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("refquant quantize: error:") and "Q9_9" in err and err.count("\n") == 1, err
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(20))
    assert cli.main(["quantize", str(bad), str(out), "--type", "Q4_0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("refquant quantize: error:") and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf"]  # no output, no temporary file


def test_quantize_then_report_on_the_result(small_gguf, tmp_path):
    """`refquant quantize` writes a file refquant's own runtime loads, with the recipe's types."""
    from refquant.gguf import file as gguf_file
    from refquant.gguf import recipes

    out = tmp_path / "small-Q4_0.gguf"
    proc = refquant("quantize", small_gguf, str(out), "--type", "Q4_0")
    assert proc.returncode == 0, proc.stderr
    f = gguf_file.read(str(out))
    expected = recipes.tensor_types(gguf_file.read(small_gguf), "Q4_0")
    assert {n: t.type for n, t in f.tensors.items()} == expected
    assert expected["blk.0.attn_q.weight"] == "Q4_0"
    # llama.cpp loads it, and its logits follow refquant's forward pass on the same weights
    # (not equal: llama.cpp rounds activations to 8 bits per block of 32 before each product)
    from refquant.model import load_model
    from refquant.testing.llama import LlamaCpp

    model = load_model(str(out))
    tokens = model.tokenize("The quick brown fox jumps over the lazy dog. " * 3)[:32]
    theirs = LlamaCpp(str(out), n_ctx=64).logits(tokens)
    ours = np.asarray(model.forward(tokens))
    assert theirs.shape == ours.shape and np.all(np.isfinite(theirs))
    assert np.corrcoef(theirs.ravel(), ours.ravel())[0, 1] > 0.999
    report = refquant("report", "--model", str(out), "--methods", "INT8", "--tokens", "128", "--window", "128",
                      "--no-progress", "--out", str(tmp_path / "r"))
    assert report.returncode == 0, report.stderr
    assert "| INT8 |" in report.stdout


# ---------------------------------------------------------------------------------------
# --help and verify
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: refquant {command}" in out and "example" in out.lower() and f"refquant {command}" in out


def test_a_command_module_that_fails_to_import_fails_loudly(monkeypatch):
    """No command goes silently missing: build_parser raises the import's own error."""
    monkeypatch.setitem(cli.COMMANDS, "ghost", ("refquant.cli.no_such_command", "a mistyped module"))
    with pytest.raises(ModuleNotFoundError, match="refquant.cli.no_such_command"):
        cli.build_parser()


def test_a_missing_optional_package_is_one_line_saying_how_to_install_it(monkeypatch, capsys, tmp_path):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else find_spec(name, *a))
    assert cli.main(["report", "--methods", "INT8", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err == "refquant report: error: matplotlib is not installed (pip install 'refquant[model]')\n"
    assert not (tmp_path / "r").exists()  # refused before the run


def test_the_refquant_script_and_python_m_run_the_same_main():
    """`refquant` (the [project.scripts] entry point, refquant.cli:main) and `python -m refquant.cli`."""
    script = os.path.join(os.path.dirname(sys.executable), "refquant")
    if not os.path.exists(script):
        pytest.skip("refquant is not installed in this environment (pip install -e .)")
    by_script = subprocess.run([script, "verify", "--list", "--formats", "Q8_0"], capture_output=True, text=True)
    by_module = refquant("verify", "--list", "--formats", "Q8_0")
    assert by_script.returncode == by_module.returncode == 0, by_script.stderr + by_module.stderr
    assert by_script.stdout == by_module.stdout and by_script.stdout.startswith("Q8_0")
    bad = subprocess.run([script, "inspect", "/no/such.gguf"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr == "refquant inspect: error: FILE.gguf: no such file '/no/such.gguf'\n"


def test_exercises_lists_group_quant(capsys):
    assert cli.main(["exercises"]) == 0
    out = capsys.readouterr().out
    assert any(line.split()[:1] == ["group_quant"] for line in out.splitlines()), out


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "refquant report" in capsys.readouterr().out


def test_verify_prints_a_pass_table(capsys):
    assert cli.main(["verify", "--formats", "Q8_0,Q4_K"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["format", "check", "oracle"]
    body = [line for line in out[2:-1]]
    assert body and all(line.rstrip().endswith("pass") for line in body), out
    assert {line.split()[0] for line in body} == {"Q8_0", "Q4_K"}
    assert out[-1].startswith(f"{len(body)} passed, 0 failed, 0 errors, 0 skipped")


def test_verify_list(capsys):
    assert cli.main(["verify", "--list", "--formats", "Q6_K"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(line.startswith("Q6_K") for line in lines)


def test_no_library_module_imports_the_command_line():
    """Imports run one way: importing every module of refquant but the CLI loads no refquant.cli."""
    import pathlib

    import refquant

    root = pathlib.Path(refquant.__file__).parent
    names = sorted(".".join(("refquant", *p.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
                   for p in root.rglob("*.py") if p.relative_to(root).parts[0] != "cli")
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    importlib.import_module(name)\n"
            "    assert 'refquant.cli' not in sys.modules, name\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(names) > 20 and "refquant.report" in names and "refquant.gguf.recipes" in names
