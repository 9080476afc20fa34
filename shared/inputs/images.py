"""Image inputs: data URIs and http(s) URLs, fetched and decoded within bounds.

Pillow is light enough for the API, which checks data URIs at submission; workers use the same
code to fetch and decode.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import re
import time
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes, urlsplit

import httpx
from PIL import Image, ImageOps

from shared.security.ssrf import URLRefused, guarded_request, redirect_target

ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP"})
_DATA_URI = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,(?P<data>.*)$", re.S
)
_WHITESPACE = re.compile(r"\s+")


class ImageInputError(ValueError):
    """An image input that cannot be used; the message says why, for the user."""


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int


def check_uri_scheme(uri: str) -> str:
    """Return the scheme of an image URI, refusing anything but http, https and data."""
    if len(uri) <= _REMEMBERED_URI_CHARS:
        return _remembered_scheme(uri)
    return _scheme(uri)


# URIs up to this long have their scheme remembered (a batch file names one image in thousands of
# lines, and checks it several times in each); longer ones (data URIs) are never kept alive for it.
_REMEMBERED_URI_CHARS = 2048


@functools.lru_cache(maxsize=4096)
def _remembered_scheme(uri: str) -> str:
    return _scheme(uri)


def _scheme(uri: str) -> str:
    scheme = urlsplit(uri).scheme.lower()
    if scheme not in {"http", "https", "data"}:
        raise ImageInputError(f"must be an http(s) URL or a data URI, not a {scheme or 'relative'!r} URI")
    if scheme in {"http", "https"} and not urlsplit(uri).hostname:
        raise ImageInputError("URL has no host")
    return scheme


def decode_data_uri(uri: str, max_bytes: int) -> bytes:
    """The bytes of a ``data:`` URI (base64 or percent-encoded), bounded by ``max_bytes``.

    Base64 may be wrapped in lines (what ``base64 photo.png`` prints), hold other whitespace, or
    lack its ``=`` padding: all are accepted, as browsers accept them."""
    match = _DATA_URI.match(uri)
    if match is None:
        raise ImageInputError("malformed data URI")
    payload = match["data"]
    if match["b64"]:
        payload = _WHITESPACE.sub("", payload)
        if len(payload.rstrip("=")) * 3 // 4 > max_bytes:  # padding is no data: a file at the cap fits
            raise ImageInputError(f"data URI is larger than {max_bytes} bytes")
        try:
            data = base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ImageInputError("data URI is not valid base64") from None
    else:
        data = unquote_to_bytes(payload)
    if len(data) > max_bytes:
        raise ImageInputError(f"data URI is larger than {max_bytes} bytes")
    return data


def inspect_image(data: bytes, max_pixels: int) -> ImageInfo:
    """Read only the header: format and size, checked against the allow-list and the pixel cap."""
    with _opened(data, max_pixels) as img:
        return _checked_header(img, max_pixels)


def _opened(data: bytes, max_pixels: int) -> Image.Image:
    """The image, its header read (nothing decoded yet); unreadable data is an ``ImageInputError``."""
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ImageInputError(f"image has more than {max_pixels} pixels") from None
    except (OSError, ValueError, SyntaxError):
        raise ImageInputError("not a readable image") from None


def _checked_header(img: Image.Image, max_pixels: int) -> ImageInfo:
    """An opened image's format and size, checked against the allow-list and the pixel cap."""
    info = ImageInfo(img.format or "", img.width, img.height)
    if info.format not in ALLOWED_FORMATS:
        raise ImageInputError(f"image format {info.format or 'unknown'} is not one of {sorted(ALLOWED_FORMATS)}")
    if info.width * info.height > max_pixels:
        raise ImageInputError(f"image is {info.width}x{info.height}, more than {max_pixels} pixels")
    return info


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode fully to RGB, upright (EXIF orientation applied), after checking the header, so a
    decompression bomb is refused before decoding. Truncated or corrupt data is an ``ImageInputError``."""
    return _decode_inspected(data, max_pixels)[0]


def _decode_inspected(data: bytes, max_pixels: int) -> tuple[Image.Image, ImageInfo]:
    """``decode_image``, and what the header check found (its format): the data opened once, its header
    checked before any pixel is decoded."""
    with _opened(data, max_pixels) as img:
        info = _checked_header(img, max_pixels)
        try:
            img.load()
            ImageOps.exif_transpose(img, in_place=True)  # no copy when it is upright already
            return img.convert("RGB"), info
        except Image.DecompressionBombError:
            raise ImageInputError(f"image has more than {max_pixels} pixels") from None
        except (OSError, ValueError, SyntaxError, EOFError):
            raise ImageInputError("image data is truncated or corrupt") from None


@dataclass(frozen=True)
class CheckedImage:
    """What submission learned by decoding an image input fully: it is usable, and these facts."""

    format: str
    width: int
    height: int
    # A single shade: no structure to follow (a depth map like that carries no depth).
    flat: bool


def check_image(data: bytes, max_pixels: int) -> CheckedImage:
    """Decode an image input fully, once, within the pixel cap (``decode_image``), and keep the facts
    per-field checks need; the decoded pixels are not kept."""
    image, info = _decode_inspected(data, max_pixels)
    low, high = image.convert("L").getextrema()
    return CheckedImage(info.format, image.width, image.height, flat=low == high)


def fetch_url(url: str, *, timeout_s: float, max_bytes: int, allow_private: bool, max_redirects: int = 5) -> bytes:
    """GET an http(s) URL through the SSRF guard, refusing bodies over ``max_bytes`` and answers
    slower than ``timeout_s``. Redirects are followed by hand: every hop is judged again, and a
    redirect from https to plain http is refused."""
    deadline = time.monotonic() + timeout_s
    for _ in range(max_redirects + 1):
        try:
            with guarded_request("GET", url, allow_private=allow_private, timeout_s=timeout_s) as response:
                if response.is_redirect:
                    url = redirect_target(url, response.headers["location"])
                    continue
                if response.status_code != 200:
                    raise ImageInputError(f"fetching {url} answered HTTP {response.status_code}")
                return _read_bounded(response, url, max_bytes, deadline, timeout_s)
        except URLRefused as exc:
            raise ImageInputError(f"{url}: {exc}") from None
        except httpx.TimeoutException:
            raise ImageInputError(f"fetching {url} timed out after {timeout_s:g} s") from None
        except (httpx.HTTPError, httpx.InvalidURL, UnicodeError) as exc:  # the last two: a URL httpx cannot send
            raise ImageInputError(f"fetching {url} failed: {exc}") from None
    raise ImageInputError(f"fetching {url}: more than {max_redirects} redirects")


def _read_bounded(response: httpx.Response, url: str, max_bytes: int, deadline: float, timeout_s: float) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ImageInputError(f"{url} is larger than {max_bytes} bytes")
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise ImageInputError(f"{url} is larger than {max_bytes} bytes")
        # A server trickling bytes must not stretch the fetch past its time limit.
        if time.monotonic() > deadline:
            raise ImageInputError(f"fetching {url} timed out after {timeout_s:g} s")
        chunks.append(chunk)
    return b"".join(chunks)


def load_image_bytes(
    uri: str, *, timeout_s: float, max_bytes: int, allow_private: bool, max_redirects: int = 5
) -> bytes:
    """The raw bytes behind an image input, whichever kind of URI it is."""
    if check_uri_scheme(uri) == "data":
        return decode_data_uri(uri, max_bytes)
    return fetch_url(
        uri, timeout_s=timeout_s, max_bytes=max_bytes, allow_private=allow_private, max_redirects=max_redirects
    )
