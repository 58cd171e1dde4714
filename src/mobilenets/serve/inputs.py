"""The images of a request: a raw image body or multipart form files, within a size limit.

Every refusal is an :class:`HTTPProblem` with its 4xx status, which the app answers as JSON.
The body is read in chunks and refused as soon as it passes ``--max-body-mb``, so a client
cannot make the server hold more than that in memory, whatever its ``Content-Length`` says.
"""

from __future__ import annotations

from typing import Any

from ..errors import MobilenetsError

#: Content types taken as one raw image body (``image/png``, ``image/jpeg``, ...).
RAW_TYPES = ("application/octet-stream",)
HOW_TO_SEND = ("send the image as the raw body with an image/* Content-Type "
               "(curl -H 'Content-Type: image/jpeg' --data-binary @photo.jpg), or as a "
               "multipart form file (curl -F file=@photo.jpg)")


class HTTPProblem(MobilenetsError):
    """A request the server refuses: ``status`` (4xx) and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_top_k(query: Any, default: int = 5, limit: int = 1000) -> int:
    """``?top_k=N``: 1 to ``limit``; anything else is a 400."""
    raw = query.get("top_k")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPProblem(400, f"top_k must be an integer, got {raw!r}") from None
    if not 1 <= value <= limit:
        raise HTTPProblem(400, f"top_k must be in [1, {limit}], got {value}")
    return value


async def read_body(request: Any, max_bytes: int) -> bytes:
    """The whole body, refused with 413 once it passes ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise HTTPProblem(413, f"body of {int(declared):,} bytes is over the limit of {max_bytes:,} "
                               "(--max-body-mb)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise HTTPProblem(413, f"body is over the limit of {max_bytes:,} bytes (--max-body-mb)")
        chunks.append(chunk)
    return b"".join(chunks)


async def request_images(request: Any, max_bytes: int, max_files: int) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of each image the request carries: the raw body, or the form's files."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (ctype.startswith("image/") or ctype in RAW_TYPES or ctype == "multipart/form-data"):
        shown = ctype or "none"
        raise HTTPProblem(415, f"unsupported Content-Type {shown}: {HOW_TO_SEND}")
    body = await read_body(request, max_bytes)
    if ctype != "multipart/form-data":
        return [("body", body)]
    return await _form_files(request, body, max_files)


async def _form_files(request: Any, body: bytes, max_files: int) -> list[tuple[str, bytes]]:
    """The files of a multipart body already read (and so already size-checked)."""
    from starlette.requests import Request

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=max_files, max_fields=100)
    except Exception as e:  # noqa: BLE001 - python-multipart and starlette raise several types
        raise HTTPProblem(400, f"malformed multipart body ({type(e).__name__}: {str(e)[:200]})") from e
    try:
        files = [(v.filename or k, await v.read()) for k, v in form.multi_items() if hasattr(v, "read")]
    finally:
        await form.close()
    if not files:
        raise HTTPProblem(400, f"the form has no file: {HOW_TO_SEND}")
    return files

