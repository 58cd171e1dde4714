"""Issue 31: hostile input and faults, round two. One test per class of bad input: each is
refused at its root (the shared loader or validator) with one ``error:`` line and status 2,
never a traceback, a hang or a silently wrong model."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from test_robustness import rewrite_checkpoint
import torch
from PIL import Image

from mobilenets import MobilenetsError, create_model, save_model
from mobilenets.cli.main import main
from mobilenets.io import convert
from mobilenets.io.checkpoint import load_model

pytestmark = pytest.mark.usefixtures("one_thread")

PRE = {"input_size": 32, "mean": [0.5], "std": [0.25], "channels": 1}
CLASSES = ["zero", "one", "two"]


def cli_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI in-process; assert the user-error contract (status 2, exactly one line on
    stderr, an ``error:`` one, no usage block, no traceback) and return that line."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny grayscale 3-class checkpoint, as `train` writes one."""
    model = create_model("mobilenet_v3_small", width_mult=0.25, num_classes=3, in_chans=1, small_input=True)
    return save_model(model, tmp_path_factory.mktemp("ckpt") / "m.safetensors", preprocessing=PRE,
                      classes=CLASSES)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)).save(path)
    return path


def rewrite(src: Path, dst: Path, meta_change=None, tensor_change=None) -> Path:
    """A copy of a checkpoint with its metadata or tensors edited, as a hostile file would be."""
    return rewrite_checkpoint(src, dst, meta_change, tensor_change)


# --------------------------------------------------------------------------- command lines

@pytest.mark.parametrize("argv, expected", [
    (["train", "--widht-mult", "2"], "unrecognized arguments: --widht-mult 2 (did you mean '--width-mult'?)"),
    (["bench", "m", "--sedonds=3"], "unrecognized argument: --sedonds=3 (did you mean '--seconds'?)"),
    (["train", "--recipe", "small-image"], "invalid choice: 'small-image' (did you mean 'small-images'?)"),
    (["trian"], "invalid command: 'trian' (did you mean 'train'?)"),
    (["convert", "x", "--from", "torchvison", "--model", "m", "-o", "o"], "did you mean 'torchvision'?"),
    (["train", "--epochs", "many"], "argument --epochs: invalid int value: 'many'"),
    (["convert", "x"], "the following arguments are required"),
])
def test_command_line_mistakes_are_one_line_with_the_closest_choice(
        argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    line = cli_error(capsys, argv)
    assert expected in line and "usage:" not in line


# --------------------------------------------------------------------------- weights

def test_non_finite_weights_are_refused_at_load_naming_the_tensor(ckpt: Path, tmp_path: Path, image: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    for value in (float("nan"), float("inf")):
        bad = rewrite(ckpt, tmp_path / "bad.safetensors",
                      tensor_change=lambda t: t["classifier.bias"].__setitem__(1, value))
        with pytest.raises(MobilenetsError, match=r"tensor classifier.bias holds 1 non-finite value"):
            load_model(bad)
        assert "classifier.bias" in cli_error(capsys, ["predict", str(bad), str(image), "--json"])


def test_non_finite_source_weights_are_refused_at_convert(tmp_path: Path) -> None:
    state = create_model("mobilenet_v3_small").state_dict()
    name = "features.0.conv.weight" if "features.0.conv.weight" in state else next(iter(state))
    state[name].view(-1)[0] = float("-inf")
    with pytest.raises(MobilenetsError, match=rf"torchvision weights: tensor {name} holds 1 non-finite"):
        convert.from_torchvision(state, "mobilenet_v3_small")


def test_integer_tensors_for_float_weights_are_refused(ckpt: Path, tmp_path: Path) -> None:
    bad = rewrite(ckpt, tmp_path / "int.safetensors",
                  tensor_change=lambda t: t.update({"classifier.weight": t["classifier.weight"].to(torch.int32)}))
    with pytest.raises(MobilenetsError, match=r"wrong kind.*classifier.weight \(torch.int32 for torch.float32\)"):
        load_model(bad)
    state = create_model("mobilenet_v3_small").state_dict()
    state["classifier.weight"] = state["classifier.weight"].to(torch.int64)
    with pytest.raises(MobilenetsError, match=r"'classifier.weight' holds torch.int64 values"):
        convert.from_torchvision(state, "mobilenet_v3_small")


def test_predict_json_never_writes_nan(ckpt: Path, tmp_path: Path, image: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Finite weights can still overflow to inf logits (softmax: NaN): those are ``null``."""
    huge = rewrite(ckpt, tmp_path / "huge.safetensors",
                   tensor_change=lambda t: (t["head.fc.bias"].fill_(10), t["classifier.weight"].fill_(3e38)))
    assert main(["predict", str(huge), str(image), "--json"]) == 0

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    out = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert [t["probability"] for t in out[0]["top"]] == [None, None, None]


# --------------------------------------------------------------------------- metadata

def test_metadata_channels_must_match_the_weights(ckpt: Path, tmp_path: Path, image: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    bad = rewrite(ckpt, tmp_path / "ch.safetensors", meta_change=lambda m: m["preprocessing"].update(
        channels=3, mean=[0.5] * 3, std=[0.25] * 3))
    line = cli_error(capsys, ["predict", str(bad), str(image)])
    assert "preprocessing says 3 input channels, the model has 1; the metadata does not fit the weights" in line


@pytest.mark.parametrize("size", [16384, 4, 1025])
def test_metadata_input_size_is_bounded_like_training(size: int, ckpt: Path, tmp_path: Path, image: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    bad = rewrite(ckpt, tmp_path / "size.safetensors",
                  meta_change=lambda m: m["preprocessing"].update(input_size=size))
    assert f"input_size must be an integer in 8..1024, got {size}" in cli_error(
        capsys, ["predict", str(bad), str(image)])


def test_an_unreadable_checkpoint_says_permission_denied(ckpt: Path, tmp_path: Path, image: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "locked.safetensors"
    locked.write_bytes(ckpt.read_bytes())
    locked.chmod(0)
    if os.geteuid() == 0:  # root reads anything: make this one file unreadable to it
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **k: Path(p) != locked and real(p, mode, **k))
    line = cli_error(capsys, ["predict", str(locked), str(image)])
    assert line == f"error: permission denied: cannot read checkpoint {locked}"


def test_class_names_are_escaped_on_a_terminal(ckpt: Path, tmp_path: Path, image: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    hostile = ["\x1b[2J\x1b[31mred", "two\nerror: forged line", "ok"]
    bad = rewrite(ckpt, tmp_path / "esc.safetensors", meta_change=lambda m: m.update(classes=hostile))
    assert main(["predict", str(bad), str(image), "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and out.count("\n") == 1
    assert "\\x1b[2J\\x1b[31mred" in out and "two\\nerror: forged line" in out
    assert main(["predict", str(bad), str(image), "--json"]) == 0
    names = {t["class"] for t in json.loads(capsys.readouterr().out)[0]["top"]}
    assert names == set(hostile)  # JSON escapes them itself and keeps them exact


# --------------------------------------------------------------------------- resumed runs

def _saved_run(tmp_path: Path, **changes) -> Path:
    """A run folder whose config.json is a real resolved configuration, edited by hand."""
    from dataclasses import asdict

    from mobilenets.training import TrainConfig

    run = tmp_path / "run"
    run.mkdir()
    (run / "last.safetensors").write_bytes(b"")
    config = {**asdict(TrainConfig(out=str(run)).resolved()), "world_size": 1, **changes}
    (run / "config.json").write_text(json.dumps(config))
    return run


@pytest.mark.parametrize("value, message", [
    ("many", 'epochs must be int or None, got "many"'), ([3], "epochs must be int or None, got [3]"),
    (None, "epochs must be in [1, 100000], got None"), (2.5, "epochs must be int or None, got 2.5"),
    (10 ** 15, "epochs must be in [1, 100000]"), (True, "epochs must be int or None, got true"),
])
def test_a_hand_edited_config_json_is_validated_like_the_command_line(
        value, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _saved_run(tmp_path, epochs=value)
    line = cli_error(capsys, ["train", "--resume", "--out", str(run)])
    assert f"{run / 'config.json'} is corrupt" in line and message in line


def test_an_untouched_config_json_is_accepted_and_auto_resumes_in_the_recorded_precision(tmp_path: Path) -> None:
    from mobilenets.training.config import read_saved_config

    config, world_size = read_saved_config(_saved_run(tmp_path, precision="auto", precision_used="bf16"))
    assert config.precision == "bf16" and world_size == 1 and config.epochs >= 1


# --------------------------------------------------------------------------- paper cost, bench

@pytest.mark.parametrize("argv, message", [
    (["--m", "100000000000"], "M must be an integer in 1..1000000, got 100000000000"),
    (["--m", "1000000", "--n", "1000000", "--df", "100000"], "is over 1e+18 MAdds"),
])
def test_paper_cost_bounds_its_dimensions(argv: list[str], message: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert message in cli_error(capsys, ["paper", "cost", *argv, "--out", str(tmp_path)])
    from mobilenets.analysis.paper.cost import layer_cost

    assert layer_cost(3, 10 ** 6, 10 ** 6, 333).standard_madds == 9 * 10 ** 12 * 333 ** 2  # just inside


BENCH = ["bench", "mobilenet_v3_small", "--width-mult", "0.25", "--resolution", "32", "--batch", "1",
         "--backends", "eager", "--seconds", "0.05", "--threads", "1"]


@pytest.fixture()
def small_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    import mobilenets.deploy.bench as bench

    monkeypatch.setattr(bench, "matmul_peak", lambda threads, size: 1e9)


def test_bench_where_every_backend_failed_is_an_error(small_peak, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import mobilenets.deploy.bench as bench

    def out_of_memory(self, backend: str, batch: int):
        raise RuntimeError("DefaultCPUAllocator: not enough memory")

    monkeypatch.setattr(bench._Backends, "runner", out_of_memory)
    assert main(BENCH) == 2
    err = capsys.readouterr().err
    assert "error: no backend ran at any batch size (eager, batch 1: unavailable: RuntimeError: " \
           "DefaultCPUAllocator: not enough memory)" in err


def test_bench_keeps_third_party_noise_off_the_terminal_unless_verbose(
        small_peak, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import sys
    import warnings

    import mobilenets.deploy.bench as bench

    real = bench._Backends.runner

    def noisy(self, backend: str, batch: int):
        sys.stderr.write("AUTOTUNE packed_linear(1x144)\n")  # as Inductor writes its tables
        warnings.warn_explicit("TypedStorage is deprecated", UserWarning, "select_algorithm.py", 1,
                               module="torch._inductor.select_algorithm")
        return real(self, backend, batch)

    monkeypatch.setattr(bench._Backends, "runner", noisy)
    assert main(BENCH) == 0
    err = capsys.readouterr().err
    assert "AUTOTUNE" not in err and "deprecated" not in err and "batch 1: preparing eager" in err
    assert main(["--verbose", *BENCH]) == 0
    assert "AUTOTUNE" in capsys.readouterr().err


# --------------------------------------------------------------------------- run folders, data

def test_a_second_run_into_the_same_folder_fails_at_once_naming_the_first(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import subprocess
    import sys

    from mobilenets.training.runlock import run_lock

    out = tmp_path / "run"
    with run_lock(out):  # this process is "the first run"
        # `train` takes the lock before it reads anything (the data here does not exist)
        line = cli_error(capsys, ["train", "--data", str(tmp_path / "nowhere"), "--out", str(out)])
        assert line == (f"error: another training run (PID {os.getpid()}) is using {out}; wait for it "
                        "to end or choose another --out")
        code = ("import sys; from pathlib import Path; from mobilenets.training.runlock import run_lock\n"
                "from mobilenets.errors import MobilenetsError\n"
                f"try:\n    run_lock(Path({str(out)!r})).__enter__()\nexcept MobilenetsError as e:\n"
                "    print(e); sys.exit(2)\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert proc.returncode == 2, proc.stderr  # another process too
        assert f"another training run (PID {os.getpid()}) is using {out}" in proc.stdout
    with run_lock(out):  # released on exit; the .lock file left behind blocks nothing
        assert (out / ".lock").read_text().strip() == str(os.getpid())
    assert "data not found" in cli_error(capsys, ["train", "--data", str(tmp_path / "nowhere"), "--out", str(out)])


def _photos(root: Path, size: int = 80) -> Path:
    from datagen import make_image_folder

    return make_image_folder(root, n_per_class=2, size=size, splits=True, modes=("RGB",))


def test_a_truncated_large_image_is_skipped_like_a_small_one(tmp_path: Path) -> None:
    """One policy for every folder: without --strict an image that fails to decode is
    skipped with a warning naming it; with --strict it is an error (test_robustness)."""
    import warnings

    from mobilenets.data.datasets import load_dataset

    root = _photos(tmp_path / "photos")
    good = (root / "train" / "dog").iterdir().__next__()
    bad = root / "train" / "dog" / "cut.png"
    bad.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    ds = load_dataset(str(root), "train", image_size=72)
    i = ds.files.index(bad)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image, label = ds[i]
    assert image.shape == (3, 72, 72) and label == ds.labels[(i + 1) % len(ds)]
    assert any(str(bad) in str(w.message) and "--strict makes this an error" in str(w.message) for w in caught)
    strict = load_dataset(str(root), "train", image_size=72, strict=True)
    with pytest.raises(MobilenetsError, match="cannot read image"):
        strict[strict.files.index(bad)]


def test_an_unreadable_class_folder_says_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mobilenets.data.datasets import load_dataset

    root = _photos(tmp_path / "photos", size=28)
    locked = root / "train" / "dog"
    locked.chmod(0)
    try:
        if os.geteuid() == 0:  # root enters anything: make this one folder closed to it
            real = os.access
            monkeypatch.setattr(os, "access", lambda p, mode, **k: Path(p) != locked and real(p, mode, **k))
        with pytest.raises(MobilenetsError, match=f"permission denied: cannot read class folder {locked}$"):
            load_dataset(str(root), "train")
    finally:
        locked.chmod(0o755)


# --------------------------------------------------------------------------- fuzzing the validators

def _json_values():
    from hypothesis import strategies as st

    leaves = (st.sampled_from([0, 1, 3, 8, 32, 1024, 1025, 0.5, 2.5, 3.0, 1e-300, "3", "fp32", "auto", "sgd"])
              | st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=8))
    return st.recursive(leaves, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                        max_leaves=8)


def test_fuzz_checkpoint_metadata_validation_is_an_error_or_a_usable_model() -> None:
    """Any JSON in a checkpoint's ``preprocessing``, ``classes`` or ``holdout``: the shared
    validators either refuse it with a MobilenetsError or pass values every later step uses."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from mobilenets.io.checkpoint import check_meta_fields, check_meta_fits_model

    model = create_model("mobilenet_v3_small", width_mult=0.25, num_classes=3, in_chans=1, small_input=True)
    pre = st.fixed_dictionaries({}, optional={k: _json_values() | st.just(v) for k, v in PRE.items()})
    field = st.sampled_from(["preprocessing", "classes", "holdout"])

    @settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(field, pre | _json_values())
    def check(name: str, value) -> None:
        meta = {"model": "mobilenet_v3_small", name: value}
        try:
            check_meta_fields(meta, "f")
            check_meta_fits_model(meta, model, "f")
        except MobilenetsError:
            return
        if name == "preprocessing" and value is not None:
            p = {"channels": 1, **value}
            assert p["channels"] == 1 and 8 <= p.get("input_size", 8) <= 1024
            assert all(x != 0 for x in p.get("std", [1.0]))

    check()


def test_fuzz_config_json_validation_is_an_error_or_a_valid_config(tmp_path: Path) -> None:
    """Any JSON value for any field of a saved run's config.json: ``--resume`` either refuses
    it with a MobilenetsError (one ``error:`` line) or gets a configuration that validates."""
    from dataclasses import asdict, fields

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from mobilenets.training import TrainConfig
    from mobilenets.training.config import read_saved_config

    run = _saved_run(tmp_path)
    base = json.loads((run / "config.json").read_text())
    numeric = ["epochs", "batch_size", "seed", "workers", "accum_steps", "no_aug_epochs", "world_size"]
    names = st.sampled_from(numeric) | st.sampled_from([f.name for f in fields(TrainConfig)])

    @settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(st.dictionaries(names, _json_values(), min_size=1, max_size=3))
    def check(edits: dict) -> None:
        (run / "config.json").write_text(json.dumps({**base, **edits}))
        try:
            config, world_size = read_saved_config(run)
        except MobilenetsError:
            return
        config.validate()
        for name in ("epochs", "batch_size", "seed", "workers", "accum_steps", "no_aug_epochs"):
            value = getattr(config, name)
            assert isinstance(value, int) and not isinstance(value, bool), (name, value)
        assert isinstance(world_size, int) and world_size >= 1
        assert asdict(config).keys() == {f.name for f in fields(TrainConfig)}

    check()


def test_a_distributed_run_reports_a_workers_error_once(tmp_path: Path) -> None:
    """Every worker meets the bad class folder; the launcher prints the first failure's own
    message as its one line: no line per rank, no torchrun log lines, no ChildFailedError."""
    import subprocess
    import sys

    from datagen import make_image_folder

    root = make_image_folder(tmp_path / "photos", n_per_class=2, size=28)
    (root / "empty").mkdir()  # passes the launcher's preflight, fails in every worker
    proc = subprocess.run([sys.executable, "-m", "mobilenets", "train", "--data", str(root), "--out",
                           str(tmp_path / "r"), "--nproc-per-node", "2"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and re.sub(r"on rank \d", "on rank N", lines[0]) == (
        f"error: distributed training failed on rank N: class folder {root / 'empty'} has no images "
        "(.bmp, .gif, .jpeg, .jpg, .pgm, .png, .ppm, .tif, .tiff, .webp); torchrun ended the other "
        f"workers, and the last good checkpoint in {tmp_path / 'r'} is intact"), proc.stderr


# --------------------------------------------------------------------------- the README

README = Path(__file__).resolve().parents[1] / "README.md"
#: README commands that need no data, files or network: run as written.
QUICK = ("models", "summary", "weights")


def _readme_commands() -> list[list[str]]:
    """Every concrete ``mobilenets ...`` command line in the README (tables and code blocks)."""
    import shlex

    text = README.read_text()
    found = re.findall(r"`mobilenets ([^`]+)`", text) + re.findall(r"^mobilenets (.+?)(?:\s+#.*)?$", text, re.M)
    commands = []
    for cmd in found:
        cmd = re.sub(r"\s*\[[^\]]*\]", "", cmd)  # optional parts: [--int8 ...]
        if "..." in cmd or cmd.split()[0].isupper():  # placeholders: `mobilenets --debug ...`
            continue
        commands.append(shlex.split(cmd))
    return commands


def test_the_readme_commands_parse_and_the_quick_ones_run_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    from mobilenets.cli.parser import build_parser

    commands = _readme_commands()
    assert len(commands) >= 10 and ["demo"] in commands
    for argv in commands:
        build_parser().parse_args(argv)  # a UsageError (stale option, renamed command) fails here
    quick = [argv for argv in commands if argv[0] in QUICK]
    assert {argv[0] for argv in quick} == set(QUICK)
    for argv in quick:
        assert main(argv) == 0, (argv, capsys.readouterr().err)
        assert capsys.readouterr().out.strip()


def test_docs_predict_an_exported_file_only_after_exporting_it() -> None:
    """A code block that predicts with ``X.onnx`` first exports the checkpoint that makes it."""
    docs = Path(__file__).resolve().parents[1] / "docs"
    for path in [README, *docs.glob("*.md")]:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            m = re.match(r"mobilenets predict (\S+)\.onnx", line.strip())
            if m:
                before = "\n".join(lines[:i])
                stem = m[1].removesuffix(".int8")  # export --int8 writes X.int8.onnx
                assert f"mobilenets export {stem}.safetensors" in before, f"{path.name}:{i + 1}"


def test_a_lock_file_planted_as_a_link_is_refused_not_followed(tmp_path: Path) -> None:
    """Found while adding the lock: opening ``.lock`` for writing would follow a symbolic
    link and truncate whatever it points to."""
    from mobilenets.training.runlock import run_lock

    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").symlink_to(victim)
    with pytest.raises(MobilenetsError, match="is a symbolic link, not a lock file"):
        with run_lock(out):
            pass
    assert victim.read_text() == "keep me"


def test_error_lines_escape_names_an_attacker_chose(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Found with the class-name escaping: error messages quote folder and file names too, and
    a folder named with a newline and an escape sequence forged a second ``error:`` line."""
    from datagen import make_image_folder

    root = make_image_folder(tmp_path / "photos", n_per_class=2, size=28)
    (root / "x\x1b[2J\nerror: all good").mkdir()
    line = cli_error(capsys, ["train", "--data", str(root), "--out", str(tmp_path / "r")])
    assert "x\\x1b[2J\\nerror: all good has no images" in line


def test_a_resumed_auto_run_keeps_the_precision_it_ran_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--precision auto`` timed bf16 faster for epoch 1; after --resume the timing would
    now favour fp32, and the run still continues in bf16 without timing again."""
    import mobilenets.training.precision as precision_module
    from datagen import make_idx_dir
    from mobilenets.training import TrainConfig, Trainer, train

    data = make_idx_dir(tmp_path / "data", n_train=32, n_test=16)
    monkeypatch.setattr(precision_module, "bf16_supported", lambda: True)
    monkeypatch.setattr(precision_module, "time_precisions", lambda *a: {"fp32": 1.0, "bf16": 0.5})
    out = tmp_path / "run"
    first = train(TrainConfig(model_kwargs={"width_mult": 0.25}, data=str(data), out=str(out), epochs=2,
                              batch_size=16, max_steps=1, stop_after_epoch=1, progress=False, workers=0))
    assert first.epochs_done == 1 and first.precision == "bf16"
    monkeypatch.setattr(precision_module, "time_precisions", lambda *a: pytest.fail("timed again on resume"))
    trainer = Trainer(TrainConfig(out=str(out), resume=True, progress=False))
    assert trainer.precision == "bf16" and trainer.precision_trial is None
