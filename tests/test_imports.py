"""Importing mobilenets has no side effects (issue 27, "Must hold" 2).

A fresh interpreter runs :data:`PROBE`: it imports ``mobilenets``, then every submodule
(``pkgutil.walk_packages``, ``__main__`` left out: it runs the command line), and after each
import step records the process state a library must leave alone: the umask, torch's thread
settings, torch's operator registry, matplotlib's backend. The setters (``os.umask``,
``torch.set_num_threads``, ``torch.set_num_interop_threads``, ``matplotlib.use``, and
``torch.library.Library.define``, with which operators are registered) are wrapped as well,
because setting a value and restoring it (reading the umask) still changes it for every other
thread for a moment. Every finding names the import that caused it. A second
fresh interpreter that imports only the libraries gives the reference: what they do on
their own is not held against mobilenets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import mobilenets

#: Heavy or optional libraries that ``import mobilenets`` must leave to the commands using them.
NOT_ON_IMPORT = ("matplotlib", "onnx", "onnxruntime", "keras", "h5py", "fastapi", "starlette", "uvicorn")

PROBE = r'''
import importlib, json, os, pkgutil, sys

def umask():
    """The umask without changing it (Linux says it in /proc); elsewhere the set-and-restore
    read, with the real os.umask so that the probe does not count itself."""
    try:
        with open("/proc/self/status") as f:
            return int(next(l for l in f if l.startswith("Umask:")).split()[1], 8)
    except (OSError, StopIteration):
        old = real_umask(0)
        real_umask(old)
        return old

def caller():
    """The innermost mobilenets module on the stack: who called a wrapped setter."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name.startswith("mobilenets"):
            return name
        frame = frame.f_back
    return "?"

calls = []
step = "mobilenets"

def wrap(owner, attr, label):
    real = getattr(owner, attr)
    def wrapper(*args, **kwargs):
        calls.append({"call": f"{label}{args!r}", "step": step, "caller": caller()})
        return real(*args, **kwargs)
    setattr(owner, attr, wrapper)
    return real

os.umask(0o027)  # an unusual value, so that a module setting a "normal" one shows
real_umask = wrap(os, "umask", "os.umask")
import torch
wrap(torch, "set_num_threads", "torch.set_num_threads")
wrap(torch, "set_num_interop_threads", "torch.set_num_interop_threads")
wrap(torch.library.Library, "define", "torch.library.Library.define")  # custom_op and define use it

def backend():
    """rcParams' raw backend: reading rcParams["backend"] would resolve (and change) it."""
    mpl = sys.modules.get("matplotlib")
    if mpl is None:
        return None
    value = dict.__getitem__(mpl.rcParams, "backend")
    return "auto" if value is mpl.rcsetup._auto_backend_sentinel else str(value)

def state():
    return {"umask": umask(), "threads": torch.get_num_threads(),
            "interop": torch.get_num_interop_threads(), "backend": backend(),
            "ops": set(torch._C._dispatch_get_all_op_names())}

findings, errors, names = [], {}, []

def compare(step, before, now):
    for k in ("umask", "threads", "interop", "backend"):
        if now[k] != before[k] and before[k] is not None:
            findings.append({"what": k, "step": step, "from": before[k], "to": now[k]})
    for op in sorted(now["ops"] - before["ops"]):
        findings.append({"what": "ops", "step": step, "op": op})

def visit(package):
    """pkgutil.walk_packages, with each import a step of its own (walk_packages imports
    packages itself, which would hide what their __init__ does)."""
    global step, previous
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        if info.name.rsplit(".", 1)[-1] == "__main__":  # it runs the command line
            continue
        step = info.name
        names.append(step)
        try:
            module = importlib.import_module(step)
        except Exception as e:
            errors[step] = f"{type(e).__name__}: {e}"
            module = None
        now = state()
        compare(step, previous, now)
        previous = now
        if info.ispkg and module is not None:
            visit(module)

start = state()
import mobilenets
on_import = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1].split(",")))
previous = state()
compare("mobilenets", start, previous)
try:  # from here matplotlib.use is watched, and its backend compared step by step
    import matplotlib
    wrap(matplotlib, "use", "matplotlib.use")
except ImportError:
    pass
previous = state()
visit(mobilenets)
walked = [m.name for m in pkgutil.walk_packages(mobilenets.__path__, "mobilenets.")
          if m.name.rsplit(".", 1)[-1] != "__main__"]
print()  # a module that printed at import does not spoil the last line
json.dump({"modules": names, "walked": walked, "on_import": on_import, "calls": calls, "findings": findings,
           "errors": errors, "start": {k: v for k, v in start.items() if k != "ops"},
           "end": {k: v for k, v in previous.items() if k != "ops"},
           "libraries": [m for m in sys.modules if not m.startswith(("mobilenets", "__main__"))]}, sys.stdout)
'''

#: What the libraries do on their own: torch's settings and matplotlib's backend right after
#: importing them, and the operators registered once every other module the probe ended with
#: is imported.
REFERENCE = r'''
import importlib, json, os, sys
import torch
out = {"threads": torch.get_num_threads(), "interop": torch.get_num_interop_threads(), "backend": None}
try:
    import matplotlib
    value = dict.__getitem__(matplotlib.rcParams, "backend")
    out["backend"] = "auto" if value is matplotlib.rcsetup._auto_backend_sentinel else str(value)
except ImportError:
    pass
print()
for name in json.load(sys.stdin):
    try:
        importlib.import_module(name)
    except BaseException:
        pass
out["ops"] = sorted(torch._C._dispatch_get_all_op_names())
json.dump(out, sys.stdout)
'''


def _run(code: str, *args: str, stdin: str | None = None) -> dict[str, Any]:
    """``code`` in a fresh interpreter that imports this same mobilenets."""
    src = str(Path(mobilenets.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", code, *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def probe() -> dict[str, Any]:
    return _run(PROBE, ",".join(NOT_ON_IMPORT))


@pytest.fixture(scope="module")
def reference(probe: dict[str, Any]) -> dict[str, Any]:
    return _run(REFERENCE, stdin=json.dumps(probe["libraries"]))


def _findings(probe: dict[str, Any], what: str) -> list[str]:
    return [f"importing {f['step']}: {f.get('op') or (f.get('from'), f.get('to'))}" for f in probe["findings"]
            if f["what"] == what]


def _calls(probe: dict[str, Any], prefix: str) -> list[str]:
    return [f"{c['call']} by {c['caller']} (while importing {c['step']})" for c in probe["calls"]
            if c["call"].startswith(prefix)]


def _none(found: list[str]) -> None:
    assert not found, "\n".join(found)


def test_every_submodule_is_imported_and_imports(probe: dict[str, Any]) -> None:
    assert len(probe["modules"]) > 20 and "mobilenets.io.checkpoint" in probe["modules"]
    assert sorted(probe["modules"]) == sorted(probe["walked"])
    assert probe["errors"] == {}


def test_import_mobilenets_leaves_heavy_libraries_alone(probe: dict[str, Any]) -> None:
    assert probe["on_import"] == [], f"`import mobilenets` imported {probe['on_import']}"


def test_umask_is_neither_read_nor_changed(probe: dict[str, Any]) -> None:
    _none(_calls(probe, "os.umask") + _findings(probe, "umask"))
    assert probe["end"]["umask"] == probe["start"]["umask"] == 0o027


def test_torch_thread_settings_are_unchanged(probe: dict[str, Any], reference: dict[str, Any]) -> None:
    _none(_calls(probe, "torch.set_num") + _findings(probe, "threads") + _findings(probe, "interop"))
    assert (probe["end"]["threads"], probe["end"]["interop"]) == (reference["threads"], reference["interop"])


def test_no_operator_is_registered(probe: dict[str, Any], reference: dict[str, Any]) -> None:
    """New operators, less those the same libraries register when imported without mobilenets."""
    theirs = set(reference["ops"])
    _none([f for f in _findings(probe, "ops") if f.rsplit(": ", 1)[1] not in theirs]
          + [c for c in _calls(probe, "torch.library") if " by mobilenets" in c])


def test_matplotlib_backend_is_unchanged(probe: dict[str, Any], reference: dict[str, Any]) -> None:
    pytest.importorskip("matplotlib")
    _none(_calls(probe, "matplotlib.use") + _findings(probe, "backend"))
    assert probe["end"]["backend"] == reference["backend"]
