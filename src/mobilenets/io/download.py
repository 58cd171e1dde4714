"""Weights downloads: a cache that only ever holds checked, complete files.

The transfer itself is ``torch.hub.download_url_to_file`` (maintained by PyTorch: a progress
bar, a ``.partial`` temporary file renamed when complete). We add what a shared cache needs:
the file is checked against its published hash (registry SHA-256 or MD5, a URL's
``#sha256=<hex>`` fragment, or torch.hub's ``name-<8 hex>.ext`` prefix) *before* it takes its
place in the cache, so a failed, truncated or wrong download leaves nothing that later counts
as cached; ``MOBILENETS_MIRROR`` serves air-gapped machines; and every failure is one
:class:`MobilenetsError` that says what to do.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import secrets
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit

from ..errors import MobilenetsError

HOME_ENV = "MOBILENETS_HOME"
MIRROR_ENV = "MOBILENETS_MIRROR"
_HUB_PREFIX = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")
_FRAGMENT = re.compile(r"sha256=([0-9a-fA-F]{8,64})")


@dataclass(frozen=True)
class ExpectedHash:
    """What a downloaded file must hash to; ``sha256`` may be a prefix (torch.hub's names)."""

    sha256: str | None = None
    md5: str | None = None

    def describe(self) -> str:
        if self.sha256:
            return f"SHA-256 {'prefix ' if len(self.sha256) < 64 else ''}{self.sha256}"
        return f"MD5 {self.md5}" if self.md5 else "no published hash"


def cache_dir() -> Path:
    """``$MOBILENETS_HOME/weights``, by default ``~/.cache/mobilenets/weights``."""
    home = os.environ.get(HOME_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "mobilenets")
    return Path(home) / "weights"


def split_url(url: str) -> tuple[str, str | None]:
    """The URL without its fragment, and the SHA-256 (or prefix) a ``#sha256=`` fragment names."""
    base, _, fragment = url.partition("#")
    m = _FRAGMENT.fullmatch(fragment) if fragment else None
    if fragment and not m:
        raise MobilenetsError(f"{url}: the only URL fragment understood is #sha256=<hex>")
    return base, m.group(1).lower() if m else None


def expected_hash(url: str, sha256: str | None = None, md5: str | None = None) -> ExpectedHash:
    """The registry's hash, else the URL fragment's, else torch.hub's file-name prefix."""
    base, fragment = split_url(url)
    if sha256 or md5:
        return ExpectedHash(sha256.lower() if sha256 else None, md5.lower() if md5 else None)
    if fragment:
        return ExpectedHash(fragment)
    m = _HUB_PREFIX.search(urlsplit(base).path)
    return ExpectedHash(m.group(1)) if m else ExpectedHash()


def cache_path(url: str) -> Path:
    """Where ``url`` is cached: ``<cache>/HOST/PATH``, the layout of a mirror, so a mirror's
    tree copied into the cache is a full cache."""
    parts = urlsplit(split_url(url)[0])
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MobilenetsError(f"not an http(s) URL: {url}")
    segments = [s for s in parts.path.split("/") if s]
    if not segments or any(s in (".", "..") for s in segments):
        raise MobilenetsError(f"{url}: the URL path must name a file")
    return cache_dir().joinpath(parts.hostname, *segments)


def mirrored(url: str) -> str:
    """``https://HOST/PATH`` as ``$MOBILENETS_MIRROR/HOST/PATH`` when a mirror is set; a
    mirror without a scheme is a local folder."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if not mirror:
        return split_url(url)[0]
    parts = urlsplit(split_url(url)[0])
    if "://" not in mirror:
        mirror = Path(mirror).resolve().as_uri()
    return f"{mirror.rstrip('/')}/{parts.hostname}{parts.path}"


def check_hash(path: Path, expected: ExpectedHash) -> str | None:
    """``None`` when ``path`` matches ``expected``; otherwise what it hashed to."""
    algo = "sha256" if expected.sha256 else "md5" if expected.md5 else None
    if algo is None:
        return None
    digest = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    want = expected.sha256 or expected.md5 or ""
    got = digest.hexdigest()
    return None if got.startswith(want) else got


def _offline_error(url: str, source: str, dest: Path, reason: object) -> MobilenetsError:
    via = f" (via the mirror {source})" if source != split_url(url)[0] else ""
    return MobilenetsError(
        f"could not download {split_url(url)[0]}{via}: {reason}. Without a network, fetch that "
        f"URL elsewhere and place the file at {dest} (or set {MIRROR_ENV}); it is checked "
        "against its hash before use")


def _verified_cache_hit(url: str, dest: Path, expected: ExpectedHash) -> bool:
    """A cached file is checked before each use too: it may have been placed by hand."""
    if not dest.is_file():
        return False
    got = check_hash(dest, expected)
    if got is not None:
        dest.unlink(missing_ok=True)
        raise MobilenetsError(f"{dest} (for {split_url(url)[0]}) has hash {got}, expected "
                              f"{expected.describe()}: the file was deleted; download it again")
    return True


def _transfer(source: str, tmp: Path, progress: bool) -> None:
    """torch.hub's download, its many failure types turned into one of ours by the caller."""
    from torch.hub import download_url_to_file  # lazy: torch.hub is not needed to import mobilenets

    download_url_to_file(source, str(tmp), progress=progress)


def _truncated(path: Path) -> str | None:
    """Why ``path`` is not a whole file of its format, or ``None``. urllib returns a body cut
    short by a closed connection without an error, and a file without a published hash has
    nothing else to catch that: each format's own length bookkeeping does."""
    size = path.stat().st_size
    if path.suffix == ".safetensors":
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            try:
                header = json.loads(f.read(n)) if 0 < n <= size - 8 else None
            except ValueError:
                header = None
        if not isinstance(header, dict):
            return "its safetensors header is incomplete"
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        return None if 8 + n + max(ends, default=0) == size else "its tensors end early"
    if path.suffix == ".h5":  # HDF5 refuses a file shorter than its recorded end
        try:
            import h5py

            with h5py.File(path, "r"):
                return None
        except ImportError:
            return None  # the converter says how to install h5py
        except OSError as e:
            return f"HDF5: {e}"
    if zipfile.is_zipfile(path):  # torch.save's format; a cut one lacks its central directory
        return None
    return None if size > 0 and _legacy_pickle_ends(path) else "it is not a whole PyTorch file"


def _legacy_pickle_ends(path: Path) -> bool:
    """Pre-1.6 torch files (some old timm weights) are not zips: whether one loads whole."""
    from .convert import read_torch_weights

    try:
        read_torch_weights(path)
    except MobilenetsError:
        return False
    return True


def check_complete(path: Path, source: str) -> None:
    why = _truncated(path)
    if why:
        raise MobilenetsError(f"the download of {source} was cut short or is not a weights file "
                              f"({why}, {path.stat().st_size:,} bytes); nothing was cached: try again")


def _make_dir(dest: Path) -> None:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        probe = dest.parent / f".write-test-{secrets.token_hex(4)}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise MobilenetsError(f"cannot write to the weights cache {dest.parent}: {e.strerror or e}; "
                              f"set {HOME_ENV} to a writable folder") from e


def download(url: str, expected: ExpectedHash | None = None, progress: bool = True) -> Path:
    """The cached file for ``url``, downloading and checking it first if needed.

    A second call is a cache hit that touches no network. Every failure (no network,
    HTTP error, truncated body, wrong hash, unwritable cache) raises :class:`MobilenetsError`
    and leaves no file under the name the cache uses.
    """
    expected = expected or expected_hash(url)
    dest = cache_path(url)
    if _verified_cache_hit(url, dest, expected):
        return dest
    _make_dir(dest)
    source = mirrored(url)
    tmp = dest.with_name(f".{secrets.token_hex(4)}.partial-{dest.name}")  # keeps the suffix
    try:
        _transfer(source, tmp, progress)
        check_complete(tmp, source)
        got = check_hash(tmp, expected)
        if got is not None:
            raise MobilenetsError(f"{source} downloaded with hash {got}, expected {expected.describe()}: "
                                  "the file was not used and not kept (a corrupt download or a "
                                  "changed file on the server)")
        os.replace(tmp, dest)
    except HTTPError as e:
        raise MobilenetsError(f"could not download {source}: HTTP {e.code} {e.reason}; nothing was "
                              "cached") from e
    except (http.client.IncompleteRead, http.client.RemoteDisconnected, ConnectionResetError) as e:
        raise MobilenetsError(f"the download of {source} was cut short ({type(e).__name__}); "
                              "nothing was cached: try again") from e
    except (URLError, TimeoutError, ConnectionError) as e:
        raise _offline_error(url, source, dest, getattr(e, "reason", e)) from e
    except OSError as e:
        raise MobilenetsError(f"could not write {dest}: {e.strerror or e}; nothing was cached "
                              f"(set {HOME_ENV} to a writable folder with free space)") from e
    finally:
        tmp.unlink(missing_ok=True)
    return dest
