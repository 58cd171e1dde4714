"""The parsers of untrusted files, fuzzed: IDX, CIFAR pickles, images, checkpoints.

Each parser gets random bytes and mutated valid files (truncated, bytes flipped, set,
inserted or deleted, mostly in the header where decisions are made). It must load or raise
:class:`MobilenetsError`; any other exception, or taking longer than a few seconds, is a
failure that hypothesis shrinks to a minimal file. Runs are derandomized (the same examples
every time, for CI) and sized so the whole file takes well under 40 s on 2 cores.
"""

from __future__ import annotations

import copy
import gzip
import io
import json
import pickle
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from datagen import make_cifar10_dir, pattern_images
from mobilenets import MobilenetsError, create_model
from mobilenets.io.checkpoint import load_model, read_checkpoint, save_model
from mobilenets.data.datasets import load_cifar_dir, load_idx_dir, load_image, read_idx, safe_unpickle

# Decoders warn about the corrupt files they are fed here (EXIF, TIFF tags, sizes): expected.
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
              pytest.mark.usefixtures("one_thread")]  # small models; see conftest
SETTINGS = dict(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
WORK = Path(tempfile.mkdtemp(prefix="mobilenets-fuzz-"))  # hypothesis re-runs a test body many
# times within one function-scoped tmp_path, so the examples share a directory of their own.


class Hang(BaseException):
    """Raised by the time guard; a BaseException so that no parser's broad except hides it."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Fail an example that runs longer than ``seconds`` (a hang or a runaway allocation)."""
    def alarm(signum, frame):
        raise Hang(f"took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def loads_or_clear_error(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``'s result, or None when it raised MobilenetsError with a message; any
    other exception propagates and fails the example."""
    with time_limit(10):
        try:
            return fn(*args)
        except MobilenetsError as e:
            assert str(e).strip()
            return None


@pytest.fixture(scope="module", autouse=True)
def _remove_work_dir():
    yield
    shutil.rmtree(WORK, ignore_errors=True)


@st.composite
def mutated(draw: st.DrawFn, data: bytes, hot: int = 0) -> bytes:
    """``data`` after 1-4 edits: a bit flipped, a byte set, bytes inserted or deleted, or the
    rest cut off. Half the edits land in the first ``hot`` bytes (the header), if given."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not out:
            break
        limit = min(hot, len(out)) if hot and draw(st.booleans()) else len(out)
        pos = draw(st.integers(0, limit - 1))
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if kind == "flip":
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            out[pos] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF]) | st.integers(0, 255))
        elif kind == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del out[pos:pos + draw(st.integers(1, 8))]
        else:
            del out[pos:]
    return bytes(out)


def write(name: str, data: bytes) -> Path:
    path = WORK / name
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- IDX

def _idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.tobytes()


IDX_IMAGES = _idx_bytes(pattern_images(3, size=6)[0][..., 0])
IDX_LABELS = _idx_bytes(np.array([0, 1, 2], np.uint8))
IDX_INT32 = _idx_bytes(np.array([[1, -2], [3, 4]], ">i4"), 0x0C)


@settings(max_examples=150, **SETTINGS)
@given(st.binary(max_size=64) | st.binary(max_size=64).map(lambda b: b"\x1f\x8b" + b)
       | st.binary(max_size=40).map(lambda b: b"\x00\x00" + b))
def test_read_idx_random_bytes(data: bytes) -> None:
    result = loads_or_clear_error(read_idx, write("random-idx", data))
    assert result is None or isinstance(result, np.ndarray)


@settings(max_examples=300, **SETTINGS)
@given(st.sampled_from([IDX_IMAGES, IDX_LABELS, IDX_INT32]).flatmap(lambda b: mutated(b, hot=16)),
       st.booleans())
def test_read_idx_mutated(data: bytes, gz: bool) -> None:
    result = loads_or_clear_error(read_idx, write("mutated-idx", gzip.compress(data, mtime=0) if gz else data))
    if result is not None:  # what loads must agree with its header
        assert result.size * result.itemsize == len(data) - 4 - 4 * result.ndim


@settings(max_examples=60, **SETTINGS)
@given(mutated(gzip.compress(IDX_IMAGES, mtime=0), hot=12))
def test_read_idx_mutated_gzip_stream(data: bytes) -> None:
    result = loads_or_clear_error(read_idx, write("mutated-idx.gz", data))
    assert result is None or isinstance(result, np.ndarray)


@settings(max_examples=80, **SETTINGS)
@given(st.sampled_from([IDX_LABELS, IDX_INT32, IDX_IMAGES]).flatmap(lambda b: mutated(b, hot=16)))
def test_idx_directory_with_mutated_labels(labels: bytes) -> None:
    """The labels file feeds class counts and names: odd dtypes, shapes and values."""
    d = WORK / "idx-dir"
    d.mkdir(exist_ok=True)
    (d / "train-images-idx3-ubyte").write_bytes(IDX_IMAGES)
    (d / "train-labels-idx1-ubyte").write_bytes(labels)
    ds = loads_or_clear_error(load_idx_dir, d, "train")
    if ds is not None:
        assert len(ds.classes) >= 1 and int(ds.labels.max()) < len(ds.classes)


# --------------------------------------------------------------------------- CIFAR pickles

_CIFAR_SEED = make_cifar10_dir(WORK / "cifar-seed", n=1)
CIFAR_BATCH = (_CIFAR_SEED / "data_batch_1").read_bytes()  # the default protocol (4)
CIFAR_BATCH_P2 = pickle.dumps(pickle.loads(CIFAR_BATCH), protocol=2)
CIFAR_META = (_CIFAR_SEED / "batches.meta").read_bytes()


def _cifar_dir(batch: bytes, meta: bytes) -> Path:
    d = WORK / "cifar"
    d.mkdir(exist_ok=True)
    (d / "data_batch_1").write_bytes(batch)
    (d / "batches.meta").write_bytes(meta)
    return d


@settings(max_examples=100, **SETTINGS)
@given(st.binary(max_size=200) | st.binary(max_size=100).map(lambda b: b"\x80\x04" + b))
def test_safe_unpickle_random_bytes(data: bytes) -> None:
    loads_or_clear_error(safe_unpickle, write("random.pkl", data))


@settings(max_examples=300, **SETTINGS)
@given(st.sampled_from([CIFAR_BATCH, CIFAR_BATCH_P2, CIFAR_META]).flatmap(lambda b: mutated(b, hot=200)))
def test_cifar_mutated_pickles(data: bytes) -> None:
    """Mutations of a real batch (protocols 4 and 2) or of the class-name file; half aim at
    the opcodes before the 3 KB of pixels."""
    is_meta = len(data) < 1000
    d = _cifar_dir(CIFAR_BATCH, data) if is_meta else _cifar_dir(data, CIFAR_META)
    ds = loads_or_clear_error(load_cifar_dir, d, "train")
    if ds is not None:
        assert ds.images.shape[1:] == (3, 32, 32) and int(ds.labels.max()) < len(ds.classes)


def _pickle_containers(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6) | st.binary(max_size=6), inner,
                                                         max_size=3)


_JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
                        | st.binary(max_size=8), _pickle_containers, max_leaves=8)


@settings(max_examples=100, **SETTINGS)
@given(st.dictionaries(st.sampled_from([b"data", b"labels", "data", "labels", b"batch_label"]), _JSONISH
                       | st.builds(np.zeros, st.tuples(st.integers(0, 3), st.sampled_from([3072, 5])),
                                   st.sampled_from([np.uint8, np.float32, np.int64]))),
       _JSONISH)
def test_cifar_well_formed_pickles_of_odd_content(batch: dict, names: Any) -> None:
    """Valid pickles holding the wrong things: the loader's checks, not the unpickler's."""
    d = _cifar_dir(pickle.dumps(batch, protocol=2), pickle.dumps({b"label_names": names}, protocol=2))
    loads_or_clear_error(load_cifar_dir, d, "train")


# --------------------------------------------------------------------------- images

def _image_bytes(fmt: str, mode: str, size: int = 8) -> bytes:
    arr = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode)
    if mode == "I;16":
        img = Image.fromarray((np.asarray(Image.fromarray(arr).convert("L"), np.uint16) * 257))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


IMAGES = {f"{fmt}-{mode}": _image_bytes(fmt, mode) for fmt, mode in [
    ("PNG", "L"), ("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "I;16"), ("PNG", "LA"),
    ("JPEG", "RGB"), ("JPEG", "L"), ("GIF", "P"), ("BMP", "RGB"), ("TIFF", "RGB"), ("WEBP", "RGB"),
    ("PPM", "RGB")]}


@settings(max_examples=100, **SETTINGS)
@given(st.binary(max_size=100) | st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM",
                                                  b"II*\x00", b"P6\n"]).flatmap(
    lambda magic: st.binary(max_size=80).map(lambda rest: magic + rest)), st.sampled_from([1, 3]))
def test_load_image_random_bytes(data: bytes, channels: int) -> None:
    img = loads_or_clear_error(load_image, write("random.img", data), channels)
    assert img is None or img.mode == ("L" if channels == 1 else "RGB")


@settings(max_examples=500, **SETTINGS)
@given(st.sampled_from(sorted(IMAGES)).flatmap(lambda k: mutated(IMAGES[k], hot=64)), st.sampled_from([1, 3]))
def test_load_image_mutated(data: bytes, channels: int) -> None:
    img = loads_or_clear_error(load_image, write("mutated.img", data), channels)
    assert img is None or img.mode == ("L" if channels == 1 else "RGB")


# --------------------------------------------------------------------------- checkpoints

def _checkpoint_seed() -> tuple[bytes, dict[str, torch.Tensor], dict[str, Any]]:
    model = create_model("mobilenet_v3_small_minimal", width_mult=0.25, num_classes=2, in_chans=1,
                         small_input=True)
    path = save_model(model, WORK / "seed.safetensors", classes=["a", "b"],
                      preprocessing={"input_size": 28, "channels": 1, "mean": [0.5], "std": [0.25]})
    tensors, meta = read_checkpoint(path)
    return path.read_bytes(), tensors, meta


CKPT, CKPT_TENSORS, CKPT_META = _checkpoint_seed()
CKPT_HEADER = 8 + int.from_bytes(CKPT[:8], "little")


@settings(max_examples=100, **SETTINGS)
@given(st.binary(max_size=128) | st.binary(max_size=120).map(
    lambda b: len(b).to_bytes(8, "little") + b) | st.builds(
    lambda header, rest: len(header).to_bytes(8, "little") + header + rest,
    st.sampled_from([b'{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', b"{}", b"[]",
                     b'{"__metadata__":{"mobilenets":"{}"}}',
                     b'{"x":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,8]}}']),
    st.binary(max_size=16)))
def test_checkpoint_random_bytes(data: bytes) -> None:
    loads_or_clear_error(load_model, write("random.safetensors", data))


@settings(max_examples=200, **SETTINGS)
@given(mutated(CKPT, hot=CKPT_HEADER))
def test_checkpoint_mutated_file(data: bytes) -> None:
    result = loads_or_clear_error(load_model, write("mutated.safetensors", data))
    if result is not None:
        assert result[1]["model"] == "mobilenet_v3_small_minimal"


_KEYS = ["model", "model_kwargs", "preprocessing", "classes", "format_version", "train_state", "extra"]
_OPTIONS = ["num_classes", "in_chans", "width_mult", "dropout", "bn_eps", "bn_momentum", "padding",
            "width_convention", "small_input", "output_stride", "stem_channels", "depth_multiplier",
            "project_act", "evil"]
_PRE = ["input_size", "channels", "mean", "std"]
def _json_containers(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
                     _json_containers, max_leaves=10)
_NEAR = st.sampled_from([0, 1, 2, 3, -1, 28, 0.25, 0.5, 1e9, -0.0, 10 ** 30, 10 ** 400, float("nan"),
                         float("inf"), "", "mobilenet_v2", "../../etc/passwd", [0.5], [0.0], [], {}])


@settings(max_examples=250, **SETTINGS)
@given(st.lists(st.tuples(st.sampled_from(["top", "option", "pre"]), st.integers(0, 100), _JSON | _NEAR),
                min_size=1, max_size=3))
def test_checkpoint_mutated_metadata(edits: list[tuple[str, int, Any]]) -> None:
    """Valid files whose JSON metadata was edited: fields replaced by any JSON value."""
    meta = copy.deepcopy(CKPT_META)
    for where, i, value in edits:
        value = copy.deepcopy(value)  # sampled {} and [] are shared between examples
        if where == "top":
            meta[_KEYS[i % len(_KEYS)]] = value
        elif where == "option" and isinstance(meta.get("model_kwargs"), dict):
            meta["model_kwargs"][_OPTIONS[i % len(_OPTIONS)]] = value
        elif where == "pre" and isinstance(meta.get("preprocessing"), dict):
            meta["preprocessing"][_PRE[i % len(_PRE)]] = value
    from safetensors.torch import save_file

    path = WORK / "meta.safetensors"
    save_file(CKPT_TENSORS, str(path), metadata={"mobilenets": json.dumps(meta)})
    loads_or_clear_error(load_model, path)


@settings(max_examples=120, **SETTINGS)
@given(mutated(json.dumps(CKPT_META).encode(), hot=0))
def test_checkpoint_mutated_json_text(text: bytes) -> None:
    """The metadata's JSON text itself corrupted (invalid JSON, odd escapes, deep nesting)."""
    from safetensors.torch import save_file

    path = WORK / "json.safetensors"
    save_file(CKPT_TENSORS, str(path), metadata={"mobilenets": text.decode("utf-8", errors="replace")})
    loads_or_clear_error(load_model, path)


def test_deeply_nested_metadata_is_a_clear_error() -> None:
    """A classic JSON bomb: nesting deeper than the recursion limit."""
    from safetensors.torch import save_file

    path = WORK / "deep.safetensors"
    save_file(CKPT_TENSORS, str(path), metadata={"mobilenets": "[" * 100_000 + "]" * 100_000})
    with pytest.raises(MobilenetsError, match="corrupt metadata"):
        load_model(path)
