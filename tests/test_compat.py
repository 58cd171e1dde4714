"""Behaviour kept across the package layout (issue 27, "Must hold" 3 and 9).

Checkpoints written by the code before the move (``tests/fixtures/pre_move``, see its
``make_fixture.py``) load with today's :func:`mobilenets.load_model`, give the same logits,
metadata and predictions; and the import paths the README showed keep working, or fail with
a message naming the new one.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mobilenets

PRE_MOVE = Path(__file__).parent / "fixtures" / "pre_move"
FIXTURE_MODELS = ("mobilenet_v3_small_minimal", "mobilenet_v3_small")


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((PRE_MOVE / "expected.json").read_text())


def test_the_fixture_stays_small() -> None:
    assert sum(p.stat().st_size for p in PRE_MOVE.iterdir() if p.is_file()) < 300_000


@pytest.mark.parametrize("name", FIXTURE_MODELS)
def test_pre_move_checkpoint_loads_with_the_same_logits(name: str, expected: dict) -> None:
    model, meta = mobilenets.load_model(PRE_MOVE / f"{name}.safetensors")
    arrays = np.load(PRE_MOVE / "logits.npz")
    with torch.no_grad():
        logits = model(torch.from_numpy(arrays["x"]))
    # The pre-move code reproduced its own logits bit for bit; the tolerance is for other
    # CPUs and torch builds, far below the logits' size (~0.2-0.5).
    torch.testing.assert_close(logits, torch.from_numpy(arrays[name]), rtol=1e-5, atol=1e-6)
    assert meta == expected[name]["meta"]


@pytest.mark.parametrize("name", FIXTURE_MODELS)
def test_pre_move_checkpoint_predicts_as_before(name: str, expected: dict) -> None:
    """The stored preprocessing (28 px, 1 channel, mean/std) drives ``predict`` as it did."""
    from mobilenets.deploy.predict import predict_files

    model, meta = mobilenets.load_model(PRE_MOVE / f"{name}.safetensors")
    top = predict_files(model, meta, [PRE_MOVE / "image.png"], top_k=3)[0].top
    want = expected[name]["predict_top3"]
    assert [c for c, _ in top] == [c for c, _ in want]
    np.testing.assert_allclose([p for _, p in top], [p for _, p in want], rtol=1e-5, atol=1e-7)


#: (statement, expression): what the README showed, and the name it must give.
OLD_PATHS = [
    ("import mobilenets.train", "mobilenets.train.train"),
    ("import mobilenets.train", "mobilenets.train.evaluate"),
    ("from mobilenets.train import Trainer, TrainConfig", "Trainer"),
    ("import mobilenets.predict", "mobilenets.predict.predict_files"),
    ("import mobilenets.checkpoint", "mobilenets.checkpoint.save_model"),
    ("import mobilenets.convert", "mobilenets.convert.from_torchvision"),
    ("from mobilenets import convert", "convert.from_timm"),
    ("from mobilenets import convert", "convert.from_keras"),
    ("import mobilenets.cpu", "mobilenets.cpu.keep_freed_memory"),
    ("from mobilenets import cpu", "cpu.reduce_range_default"),
    ("import mobilenets.data", "mobilenets.data.load_image"),
    ("from mobilenets import deploy", "deploy.bf16_inference"),
    ("import mobilenets.deploy", "mobilenets.deploy.bf16_inference"),
    ("from mobilenets.deploy import load_artifact, preprocess", "load_artifact"),
    ("from mobilenets.deploy import load_artifact, preprocess", "preprocess"),
    ("import mobilenets.bench", "mobilenets.bench.compile_model"),
    ("import mobilenets.bench", "mobilenets.bench.compile_options"),
    ("import mobilenets.blocks", "mobilenets.blocks.InvertedResidual"),
    ("import mobilenets.paper", "mobilenets.paper"),
    ("from mobilenets import profile", "profile"),
]


@pytest.mark.parametrize(("statement", "expression"), OLD_PATHS, ids=[e for _, e in OLD_PATHS])
def test_old_import_paths_still_work(statement: str, expression: str) -> None:
    namespace: dict = {}
    exec(statement, namespace)  # noqa: S102 - literal statements from the table above
    value = eval(expression, namespace)  # noqa: S307
    assert callable(value) or isinstance(value, type(sys))


#: old module -> its new home: one module object, so a patch through either name is seen by both.
SAME_MODULE = {"mobilenets.train": "mobilenets.training", "mobilenets.predict": "mobilenets.deploy.predict",
               "mobilenets.checkpoint": "mobilenets.io.checkpoint", "mobilenets.convert": "mobilenets.io.convert",
               "mobilenets.cpu": "mobilenets.ops.cpu", "mobilenets.bench": "mobilenets.deploy.bench",
               "mobilenets.blocks": "mobilenets.models.blocks", "mobilenets.paper": "mobilenets.analysis.paper"}


@pytest.mark.parametrize("old", sorted(SAME_MODULE))
def test_an_old_path_is_the_new_module(old: str) -> None:
    assert importlib.import_module(old) is importlib.import_module(SAME_MODULE[old])


@pytest.mark.parametrize("statement", ["from mobilenets.profile import profile", "import mobilenets.profile"])
def test_the_profile_module_path_names_the_new_ones(statement: str) -> None:
    with pytest.raises(ModuleNotFoundError) as raised:
        exec(statement, {})  # noqa: S102
    message = str(raised.value)
    assert "mobilenets.profile(model, resolution)" in message and "mobilenets.analysis.profile" in message


def test_readme_profile_call_runs() -> None:
    from mobilenets import profile

    table = profile(mobilenets.create_model("mobilenet_v1", width_mult=0.25, num_classes=10), 32).table()
    assert "MAdds" in table or "madds" in table.lower()


#: Modules that ``import mobilenets`` alone made attributes of the package before the move.
PRE_MOVE_ATTRIBUTES = ("base", "blocks", "conventions", "errors", "layers", "mobilenet_v1", "mobilenet_v2",
                       "mobilenet_v3", "registry")


def test_modules_reachable_after_a_plain_import_still_are() -> None:
    """``import mobilenets; mobilenets.blocks...`` worked before the move. A fresh
    interpreter, because any test that imported ``mobilenets.blocks`` set the attribute."""
    code = ("import mobilenets, sys\n"
            f"missing = [n for n in {PRE_MOVE_ATTRIBUTES!r} if not hasattr(mobilenets, n)]\n"
            "print(missing)\n"
            "sys.exit(1 if missing else 0)\n")
    src = str(Path(mobilenets.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, f"missing after `import mobilenets`: {proc.stdout.strip()} {proc.stderr[-2000:]}"
