"""Issue 12, items 2-6, as a careless or hostile user meets them through the command line.

Each case asserts the exit code, the single stderr line, and the files before and after (checksums of
every file in the directories involved)."""
import copy
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from conftest import SMALL, perturb_identity_params
from tlc_export import zoo
from tlc_export.cli import main
from tlc_export.fileio import ONNX_REPORT_KEY, OutputSet, onnx_report

NAFNET = ["--arch", "nafnet", "--arch-kwargs", json.dumps(SMALL["nafnet"])]
CALIB = "32"
REPO = Path(__file__).resolve().parents[1]


def cli(args, capsys):
    """Run the CLI in-process: (exit code, stderr lines)."""
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def one_line(code, err, *needles):
    assert code == 2, (code, err)
    assert len(err) == 1, err
    assert err[0].startswith("tlc-export: error: "), err
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    return err[0]


def snapshot(*dirs) -> dict:
    """sha256 and mode of every file under ``dirs`` (names included, so a new or lost file shows)."""
    out = {}
    for d in dirs:
        for p in sorted(Path(d).rglob("*")):
            if p.is_file():
                out[str(p)] = (hashlib.sha256(p.read_bytes()).hexdigest(), oct(p.stat().st_mode & 0o777))
    return out


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "naf.pth"
    model = perturb_identity_params(zoo.build("nafnet", **SMALL["nafnet"])).eval()
    torch.save({"params": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def graph(ckpt, tmp_path_factory):
    """A converted TLC graph (and its report beside it)."""
    out = tmp_path_factory.mktemp("graph") / "naf.tlc.onnx"
    assert main([str(ckpt), "--calib", CALIB, *NAFNET, "-o", str(out)]) == 0
    return out


@pytest.fixture
def work(tmp_path, ckpt):
    """A fresh directory holding a copy of the checkpoint."""
    (tmp_path / "naf.pth").write_bytes(ckpt.read_bytes())
    return tmp_path


def png(path: Path, h=20, w=24, seed=0) -> Path:
    pixels = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


# ============================================================================ 2. clobbering

def test_report_and_graph_never_share_a_path(work, capsys):
    before = snapshot(work)
    out = work / "o.onnx"
    line = one_line(*cli([work / "naf.pth", "--calib", CALIB, *NAFNET, "-o", out, "--report", out], capsys),
                    "the graph and the report would both be written to")
    assert snapshot(work) == before, line
    # the same file through a symlink
    (work / "r.json").write_text("{}")
    (work / "link.onnx").symlink_to(work / "r.json")
    before = snapshot(work)
    one_line(*cli([work / "naf.pth", "--calib", CALIB, *NAFNET, "-o", work / "link.onnx",
                   "--report", work / "r.json"], capsys), "are the same file")
    assert snapshot(work) == before


def test_default_report_never_replaces_an_unrelated_file(work, capsys):
    """The shipped layout X.pth beside its config X.json: -o X.onnx must not destroy the config."""
    (work / "naf.json").write_text('{"width": 8}\n')
    before = snapshot(work)
    one_line(*cli([work / "naf.pth", "--calib", CALIB, *NAFNET, "-o", work / "naf.onnx"], capsys),
             f"{work / 'naf.json'} exists and was not written by tlc-export", "--report")
    assert snapshot(work) == before
    # the default graph path holding a file we did not write is refused the same way
    (work / "naf.tlc.onnx").write_bytes(b"someone else's graph")
    before = snapshot(work)
    one_line(*cli([work / "naf.pth", "--calib", CALIB, *NAFNET, "--report", work / "r.json"], capsys),
             "naf.tlc.onnx exists and was not written by tlc-export", "-o")
    assert snapshot(work) == before


def test_previous_outputs_are_recognised_and_replaced(work, capsys):
    args = [work / "naf.pth", "--calib", CALIB, *NAFNET]
    assert cli(args, capsys)[0] == 0
    first = json.loads((work / "naf.tlc.json").read_text())
    assert first["tool"] == "tlc-export"
    code, err = cli(args + ["--box-filter", "cumsum"], capsys)          # same paths, different graph
    assert code == 0 and err == []
    assert json.loads((work / "naf.tlc.json").read_text())["box_filter"] == "cumsum"
    assert onnx_report(work / "naf.tlc.onnx")["box_filter"] == "cumsum"
    # a file the user names explicitly may be replaced even if it is not ours
    (work / "mine.json").write_text("precious?")
    assert cli(args + ["--report", work / "mine.json"], capsys)[0] == 0
    assert json.loads((work / "mine.json").read_text())["tool"] == "tlc-export"


def test_never_writes_over_an_input_also_through_links(work, graph, capsys):
    src = work / "g.onnx"
    src.write_bytes(graph.read_bytes())
    os.link(src, work / "hard.onnx")
    (work / "soft.onnx").symlink_to(src)
    before = snapshot(work)
    for target in (src, work / "hard.onnx", work / "soft.onnx"):
        one_line(*cli([src, "--calib", CALIB, "-o", target], capsys), "is the input file")
    one_line(*cli([src, "--calib", CALIB, "--report", work / "hard.onnx"], capsys), "is the input file")
    assert snapshot(work) == before


def test_verify_json_never_replaces_the_model_or_graph(work, graph, capsys):
    g = work / "g.onnx"
    g.write_bytes(graph.read_bytes())
    before = snapshot(work)
    for target in (work / "naf.pth", g):
        one_line(*cli(["verify", work / "naf.pth", g, "--calib", CALIB, *NAFNET, "--json", target], capsys),
                 "is the input file")
    assert snapshot(work) == before


def test_restore_never_replaces_images_it_did_not_write(tmp_path, graph, capsys):
    a = png(tmp_path / "a.png")
    b = png(tmp_path / "b.jpg")
    before = snapshot(tmp_path)
    # -o the images' own directory: a.png would be written over the input a.png
    one_line(*cli(["restore", graph, a, "-o", tmp_path], capsys), "is the input file")
    # b.png there is somebody's unrelated image
    png(tmp_path / "b.png", seed=5)
    before = snapshot(tmp_path)
    one_line(*cli(["restore", graph, b, "-o", tmp_path], capsys), "b.png exists and was not written by tlc-export")
    assert snapshot(tmp_path) == before
    # our own previous output is replaced
    out = tmp_path / "out"
    assert cli(["restore", graph, b, "-o", out], capsys)[0] == 0
    assert cli(["restore", graph, b, "-o", out], capsys)[0] == 0


def test_build_outputs_never_hit_the_graph_or_each_other(tmp_path, graph, capsys):
    g = tmp_path / "g.onnx"
    g.write_bytes(graph.read_bytes())
    before = snapshot(tmp_path)
    one_line(*cli(["build", g, "-o", g, "--calib", CALIB], capsys), "is the input file")
    one_line(*cli(["build", g, "-o", tmp_path / "e.plan", "--timing-cache", tmp_path / "e.plan"], capsys),
             "would both be written to")
    assert snapshot(tmp_path) == before


# ============================================================================ 3. graph and report as one unit

def test_a_failed_rename_leaves_the_previous_outputs(work, capsys, monkeypatch):
    args = [work / "naf.pth", "--calib", CALIB, *NAFNET]
    assert cli(args, capsys)[0] == 0
    before = snapshot(work)
    real = OutputSet._swap_in
    calls = []

    def fail_second(out):
        calls.append(out.final)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(out)

    monkeypatch.setattr(OutputSet, "_swap_in", staticmethod(fail_second))
    one_line(*cli(args + ["--box-filter", "matmul"], capsys), "No space left on device",
             "the previous outputs are unchanged")
    assert len(calls) == 2                       # the graph was already swapped in, then rolled back
    assert snapshot(work) == before              # same files, no temporaries


def test_a_failed_triton_entry_writes_nothing(work, capsys, monkeypatch):
    import tlc_export.serve as serve

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(serve, "_copy_onnx", disk_full)
    (work / "models").mkdir()
    before = snapshot(work)
    one_line(*cli([work / "naf.pth", "--calib", CALIB, *NAFNET, "--triton-repo", work / "models"], capsys),
             "Triton model entry", "No space left on device")
    assert snapshot(work) == before and list((work / "models").iterdir()) == []
    assert not (work / "naf.tlc.onnx").exists()


def test_graph_carries_its_report_and_triton_entry_is_the_same_graph(work, capsys):
    code, err = cli([work / "naf.pth", "--calib", CALIB, *NAFNET, "--triton-repo", work / "models"], capsys)
    assert code == 0 and err == [f"tlc-export: warning: created directory {work / 'models'}",
                                 f"tlc-export: Triton model repository entry written: {work / 'models' / 'naf_tlc'}"]
    graph_bytes = (work / "naf.tlc.onnx").read_bytes()
    assert (work / "models" / "naf_tlc" / "1" / "model.onnx").read_bytes() == graph_bytes
    meta = {p.key: p.value for p in onnx.load_from_string(graph_bytes).metadata_props}
    assert json.loads(meta[ONNX_REPORT_KEY]) == json.loads((work / "naf.tlc.json").read_text())
    # a second run replaces our own entry (recognised), not refused
    assert cli([work / "naf.pth", "--calib", CALIB, *NAFNET, "--triton-repo", work / "models"], capsys)[0] == 0
    assert sorted(p.name for p in (work / "models").iterdir()) == ["naf_tlc"]


def test_temporaries_of_a_killed_run_are_removed_by_the_next_run(work, capsys):
    """A real SIGKILL in the middle of staging (graph and report temporaries written, not renamed)."""
    script = (f"import os, signal\nfrom tlc_export.fileio import OutputSet\n"
              f"s = OutputSet()\ns.write_bytes({str(work / 'naf.tlc.onnx')!r}, b'half')\n"
              f"s.write_text({str(work / 'naf.tlc.json')!r}, 'half')\nos.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    left = sorted(p.name for p in work.iterdir() if ".tlc-tmp-" in p.name)
    assert len(left) == 2, left
    assert cli([work / "naf.pth", "--calib", CALIB, *NAFNET], capsys)[0] == 0
    assert sorted(p.name for p in work.iterdir()) == ["naf.pth", "naf.tlc.json", "naf.tlc.onnx"]


def test_sigterm_between_renames_is_delivered_after_the_last(tmp_path):
    """A real SIGTERM (default handler: the process dies) sent while the first output is being renamed:
    the process still renames the second before it terminates, so the graph never sits beside an old
    report."""
    (tmp_path / "g.onnx").write_bytes(b"old graph")
    (tmp_path / "g.json").write_text("old report")
    script = f"""
import os, signal
from tlc_export.fileio import OutputSet
real = OutputSet._swap_in
def swap(out):
    if out.final.name == "g.onnx":
        os.kill(os.getpid(), signal.SIGTERM)
    return real(out)
OutputSet._swap_in = staticmethod(swap)
s = OutputSet()
s.write_bytes({str(tmp_path / "g.onnx")!r}, b"new graph")
s.write_text({str(tmp_path / "g.json")!r}, "new report")
s.commit()
print("not reached")
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGTERM and "not reached" not in proc.stdout, proc.stderr
    assert (tmp_path / "g.onnx").read_bytes() == b"new graph"
    assert (tmp_path / "g.json").read_text() == "new report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.json", "g.onnx"]


def test_sweep_and_bench_never_replace_unrelated_files(work, capsys):
    pairs = work / "pairs"
    pairs.mkdir()
    png(pairs / "a_noisy.png", 32, 32, seed=1)
    png(pairs / "a_clean.png", 32, 32, seed=2)
    out = work / "out"
    out.mkdir()
    (out / "sweep.json").write_text('{"my": "notes"}')
    (out / "bench.json").write_text('{"my": "timings"}')
    before = snapshot(work)
    one_line(*cli(["sweep", work / "naf.pth", "--pairs", pairs, "--calib-sizes", "16", *NAFNET, "--out", out],
                  capsys), "sweep.json exists and was not written by tlc-export")
    one_line(*cli(["sweep", work / "naf.pth", "--pairs", pairs, *NAFNET, "--threads", 0], capsys), "--threads 0")
    one_line(*cli(["bench", work / "naf.pth", "--calib", CALIB, *NAFNET, "--out", out], capsys),
             "bench.json exists and was not written by tlc-export")
    one_line(*cli(["bench", work / "naf.pth", "--calib", CALIB, *NAFNET, "--out", work / "no" / "dir"], capsys),
             "does not exist")
    assert snapshot(work) == before


# ============================================================================ 4. one line and exit 2

def test_unwritable_output_locations(work, capsys):
    base = [work / "naf.pth", "--calib", CALIB, *NAFNET]
    (work / "afile").write_text("x")
    (work / "adir.onnx").mkdir()
    before = snapshot(work)
    one_line(*cli(base + ["-o", work / "missing" / "deeper" / "o.onnx"], capsys),
             "does not exist", "tlc-export does not create missing parent directories")
    one_line(*cli(base + ["-o", work / "afile" / "o.onnx"], capsys), "which is a file, not a directory")
    one_line(*cli(base + ["-o", work / "adir.onnx"], capsys), "is a directory; give a file path")
    one_line(*cli(base + ["--report", work], capsys), "is a directory")
    one_line(*cli(base + ["--triton-repo", work / "afile"], capsys), "exists and is not a directory")
    assert snapshot(work) == before


def test_read_only_output_directory(work, capsys):
    ro = work / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    target = ro if not os.access(ro, os.W_OK) or os.getuid() != 0 else Path("/sys")   # root ignores modes
    probe = target / "probe"
    try:
        probe.write_text("")
        probe.unlink()
        pytest.skip(f"{target} is writable here")
    except OSError:
        pass
    line = one_line(*cli([work / "naf.pth", "--calib", CALIB, *NAFNET, "-o", target / "o.onnx"], capsys),
                    "cannot write the graph into")
    assert "denied" in line or "Read-only" in line


def test_corrupt_graphs_given_to_every_graph_command(tmp_path, ckpt, capsys):
    img = png(tmp_path / "i.png")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(os.urandom(3000))
    half = tmp_path / "half.onnx"
    half.write_bytes(b"\x08\x07\x12\x07pytorch\x3a\xff\xff\x01")
    before = snapshot(tmp_path)
    for bad in (empty, garbage, half):
        one_line(*cli(["verify", ckpt, bad, "--calib", CALIB, *NAFNET], capsys), str(bad))
        one_line(*cli(["restore", bad, img, "-o", tmp_path / "out"], capsys), str(bad))
        one_line(*cli(["check", bad], capsys), str(bad))
        one_line(*cli(["build", bad, "-o", tmp_path / "e.plan", "--calib", CALIB], capsys), str(bad))
        one_line(*cli([bad, "--calib", CALIB], capsys), str(bad))     # an empty .onnx: an error, not exit 0
    assert snapshot(tmp_path) == before


def test_opset_outside_the_installed_range(work, capsys):
    from tlc_export.guards import max_opset

    top = max_opset()[0]
    for opset in (top + 1, 99):
        one_line(*cli([work / "naf.pth", "--calib", CALIB, *NAFNET, "--opset", opset], capsys),
                 f"--opset {opset}", f"choose 17 to {top}")
    one_line(*cli([work / "naf.pth", "--calib", CALIB, *NAFNET, "--opset", 11], capsys), f"opset 17 to {top}")


def test_threads_must_be_positive(work, graph, capsys):
    img = png(work / "i.png")
    for n in (0, -2):
        one_line(*cli(["bench", work / "naf.pth", "--calib", CALIB, *NAFNET, "--threads", n], capsys),
                 f"--threads {n} must be at least 1")
        one_line(*cli(["restore", graph, img, "-o", work / "o", "--threads", n], capsys), "--threads")
    assert not (work / "o").exists()


def test_non_finite_weights_name_the_tensor(tmp_path, capsys):
    model = zoo.build("nafnet", **SMALL["nafnet"])
    for bad in (float("nan"), float("inf")):
        state = copy.deepcopy(model.state_dict())
        state["intro.weight"][0, 0, 0, 0] = bad
        torch.save({"params": state}, tmp_path / "bad.pth")
        one_line(*cli([tmp_path / "bad.pth", "--calib", CALIB, *NAFNET], capsys),
                 "'intro.weight'", "NaN" if bad != bad else "Inf", "damaged")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pth"]


def test_absurd_sizes_are_refused_with_an_estimate(work, graph, capsys):
    one_line(*cli([work / "naf.pth", "--calib", "99999x99999", *NAFNET], capsys),
             "--calib 99999x99999 needs at least", "GiB of memory (estimated)")
    one_line(*cli([work / "naf.pth", "--calib", CALIB, *NAFNET, "--input-shape", "64x3x8192x8192"], capsys),
             "--input-shape 64x3x8192x8192 needs at least")
    one_line(*cli(["verify", work / "naf.pth", graph, "--calib", CALIB, *NAFNET, "--sizes", "64x64,99996x99996"],
                  capsys), "--sizes 99996x99996 needs at least")
    huge = json.dumps({**SMALL["nafnet"], "width": 200000})
    one_line(*cli([work / "naf.pth", "--calib", CALIB, "--arch", "nafnet", "--arch-kwargs", huge], capsys),
             "GiB of weights", "check the --arch-kwargs")
    assert sorted(p.name for p in work.iterdir()) == ["naf.pth"]


def test_truncated_images_are_refused(tmp_path, graph, capsys):
    whole = png(tmp_path / "whole.png").read_bytes()
    (tmp_path / "no_iend.png").write_bytes(whole[:-12])           # decoders accept this silently
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    Image.open(tmp_path / "whole.png").save(tmp_path / "whole.jpg", quality=90)
    jpg = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "no_eoi.jpg").write_bytes(jpg[:-2])
    before = snapshot(tmp_path)
    for name in ("no_iend.png", "cut.png", "no_eoi.jpg"):
        one_line(*cli(["restore", graph, tmp_path / name, "-o", tmp_path / "out"], capsys), name, "truncated")
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()


# ============================================================================ 5. verdicts and messages

def test_atol_must_be_a_finite_non_negative_number(work, graph, capsys):
    for atol in ("nan", "inf", "-1e-4"):
        one_line(*cli(["verify", work / "naf.pth", graph, "--calib", CALIB, *NAFNET, f"--atol={atol}"], capsys),
                 "--atol", "finite number >= 0")


def test_static_shape_other_than_the_calibration_size(work, capsys):
    """--static --input-shape 1x3x64x64 --calib 32: calibrated on a dynamic copy, then the shape baked."""
    from tlc_export.reference import to_local
    from tlc_export.runtime import ort_session

    out = work / "s.onnx"
    code, err = cli([work / "naf.pth", "--calib", CALIB, *NAFNET, "--static", "--input-shape", "1x3x64x64",
                     "-o", out], capsys)
    assert code == 0 and err == []
    g = onnx.load(str(out))
    dims = lambda vi: [d.dim_value for d in vi.type.tensor_type.shape.dim]   # noqa: E731
    assert dims(g.graph.input[0]) == [1, 3, 64, 64] and dims(g.graph.output[0]) == [1, 3, 64, 64]
    model = zoo.build("nafnet", **SMALL["nafnet"])
    model.load_state_dict(torch.load(work / "naf.pth")["params"])
    local, _ = to_local(copy.deepcopy(model).eval(), (32, 32))
    x = np.random.default_rng(3).random((1, 3, 64, 64), dtype=np.float32)
    with torch.no_grad():
        want = local(torch.from_numpy(x)).numpy()
    got = ort_session(out).run(None, {"input": x})[0]
    assert np.abs(got - want).max() <= 1e-5
    with torch.no_grad():       # and TLC really acts at 64 (the window 32 is smaller than the map)
        assert np.abs(model.eval()(torch.from_numpy(x)).numpy() - want).max() > 1e-4


def test_loader_messages(tmp_path, capsys):
    junk = tmp_path / "junk.pth"
    for seed in range(3):
        junk.write_bytes(np.random.default_rng(seed).bytes(5000))
        line = one_line(*cli([junk, "--calib", CALIB], capsys), str(junk))
        assert "pickled Python objects" not in line
    state = zoo.build("nafnet", **SMALL["nafnet"]).state_dict()
    missing = "encoders.0.0.conv1.weight"
    del state[missing]
    torch.save({"params": state}, tmp_path / "m.pth")
    line = one_line(*cli([tmp_path / "m.pth", "--calib", CALIB, *NAFNET], capsys), "1 missing", missing)
    assert "%" not in line or "0%" not in line


def test_arch_kwargs_without_arch_is_refused(work, graph, capsys):
    kw = json.dumps(SMALL["nafnet"])
    one_line(*cli([work / "naf.pth", "--calib", CALIB, "--arch-kwargs", kw], capsys), "--arch-kwargs needs --arch")
    one_line(*cli(["verify", work / "naf.pth", graph, "--calib", CALIB, "--arch-kwargs", kw], capsys),
             "--arch-kwargs needs --arch")
    assert sorted(p.name for p in work.iterdir()) == ["naf.pth"]


def test_build_shape_errors_blame_the_right_flag(graph, tmp_path, capsys):
    for flag in ("--min-shape", "--opt-shape", "--max-shape"):
        one_line(*cli(["build", graph, "-o", tmp_path / "e.plan", flag, "1x3"], capsys), f"{flag} '1x3'")


def test_out_of_memory_in_restore_says_what_to_do(tmp_path, graph, capsys, monkeypatch):
    import onnxruntime as ort

    def oom(self, *a, **k):
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for 1 GB")

    monkeypatch.setattr(ort.InferenceSession, "run", oom)
    line = one_line(*cli(["restore", graph, png(tmp_path / "a.png"), "-o", tmp_path / "o"], capsys),
                    "out of memory", "smaller")
    assert "--multiple" not in line
    assert not (tmp_path / "o").exists()


# ============================================================================ 6. permissions

def test_outputs_get_umask_permissions_and_replaced_files_keep_their_mode(work, graph, capsys):
    umask = 0o027          # neither mkstemp's 0600 nor the usual 0644: files 0640, directories 0750
    old = os.umask(umask)
    try:
        assert cli([work / "naf.pth", "--calib", CALIB, *NAFNET, "--triton-repo", work / "m"], capsys)[0] == 0
        for name in ("naf.tlc.onnx", "naf.tlc.json"):
            assert (work / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
        assert (work / "m" / "naf_tlc").stat().st_mode & 0o777 == 0o777 & ~umask
        assert (work / "m" / "naf_tlc" / "1" / "model.onnx").stat().st_mode & 0o777 == 0o666 & ~umask
        (work / "naf.tlc.onnx").chmod(0o604)
        assert cli([work / "naf.pth", "--calib", CALIB, *NAFNET, "--box-filter", "cumsum"], capsys)[0] == 0
        assert (work / "naf.tlc.onnx").stat().st_mode & 0o777 == 0o604      # a replaced file keeps its mode
        assert (work / "naf.tlc.json").stat().st_mode & 0o777 == 0o640
        img = png(work / "a.png")
        assert cli(["restore", graph, img, "-o", work / "r"], capsys)[0] == 0
        assert (work / "r" / "a.png").stat().st_mode & 0o777 == 0o666 & ~umask
    finally:
        os.umask(old)


def test_an_unexpected_library_failure_is_one_line_not_a_traceback(monkeypatch, capsys):
    """A library failing on a model (e.g. the TorchScript interpreter on a scripted Restormer) ends in one
    line and exit 2; the traceback is there on request."""
    import tlc_export.cli as cli_module

    def failing(argv):
        raise RuntimeError("The following operation failed in the TorchScript interpreter.\nTraceback ...")

    monkeypatch.setattr(cli_module, "run_convert", failing)
    line = one_line(*cli(["model.pt", "--calib", "64"], capsys), "RuntimeError", "TorchScript interpreter",
                    cli_module.TRACEBACK_VARIABLE)
    assert "Traceback" not in line
    monkeypatch.setenv(cli_module.TRACEBACK_VARIABLE, "1")
    with pytest.raises(RuntimeError):
        main(["model.pt", "--calib", "64"])
