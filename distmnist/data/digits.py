"""Pictures of digits in, MNIST-style 28x28 uint8 arrays out, and grids of digits for people to look at.

MNIST's digits were fitted into a 20x20 box keeping their aspect ratio (anti-aliased, hence grey levels), then
placed in a 28x28 field with their centre of mass at its centre, white on black. `to_mnist` does the same to any
photo or scan: grayscale, invert when the background is light, stretch the ink to the full range, crop to the
digit, fit into 20x20, centre by centre of mass. An image already in MNIST's form (28x28 on a dark background)
is taken as it is. No TensorFlow here.
"""

import io
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageDraw, ImageOps, PngImagePlugin, UnidentifiedImageError

from distmnist.common import safeio
from distmnist.common.errors import UserError

ARRAY_SUFFIXES = (".npy", ".npz")
# Pictures in one batch, by default: ten times MNIST's test set. Each is kept as 28x28 bytes once prepared
# (100,000 take 78 MB); what a file holds is read, and bounded, one file at a time (safeio.MAX_ARRAY_BYTES).
MAX_PICTURES = 100_000
SOFTWARE = "distmnist"  # the PNG text that marks a grid distmnist drew (grid_png), which it may replace
INK_THRESHOLD = 0.25  # of full ink: pixels above it bound the crop


class ImageError(UserError):
    """One input file, or one picture in it, cannot be used; the message names it and says why."""


class TooManyPictures(ImageError):
    """A file holds more pictures than the batch has room for (`count` of them, `room` left)."""

    def __init__(self, path: str, count: int, room: int):
        super().__init__(f"{path}: holds {picture_count(count)}, more than the {room:,} this batch has room for")
        self.path, self.count, self.room = path, count, room


def picture_count(count: int) -> str:
    """ "1 picture", "3 pictures"."""
    return f"{count:,} picture" + ("" if count == 1 else "s")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _decode(f: BinaryIO, path: str) -> np.ndarray:
    # Pillow warns of its own bomb bound (the size check below says it in one line) and of damaged metadata (TIFF
    # tags, EXIF) as it decodes: the picture is answered, or refused in one line, all the same.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _decode_quietly(f, path)


def _decode_quietly(f: BinaryIO, path: str) -> np.ndarray:
    with Image.open(f) as image:  # reads the header only
        safeio.check_picture_size(image.width, image.height, path)  # before a pixel is decoded
        image = ImageOps.exif_transpose(image)  # photos: the orientation their camera recorded
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            # A transparent background is the paper: composite on white (strokes stay dark).
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image.convert("RGBA"))
        return np.asarray(image.convert("L"), dtype=np.float32)


def _gray_from_file(path: str) -> np.ndarray:
    try:
        opened = safeio.open_regular(path)  # a FIFO, a device, a socket, a folder: refused unopened
    except safeio.NotAFile as exc:
        raise ImageError(str(exc)) from None
    except OSError as exc:
        raise ImageError(str(safeio.unreadable(path, exc))) from None
    with opened as f:
        try:
            return _decode(f, path)
        except Image.DecompressionBombError:  # past Pillow's own bound, refused by Pillow as it opens the header
            assert Image.MAX_IMAGE_PIXELS is not None  # Pillow raises it only with its bound set
            raise ImageError(
                f"{path}: declares more than {Image.MAX_IMAGE_PIXELS * 2:,} pixels, more than the "
                f"{safeio.MAX_PICTURE_PIXELS / 1e6:,.0f} megapixels a picture of a digit needs; scale "
                "it down"
            ) from None
        except safeio.TooLarge as exc:
            raise ImageError(str(exc)) from None
        except UnidentifiedImageError:
            raise ImageError(
                f"{path}: "
                + (
                    "an empty file"
                    if os.fstat(f.fileno()).st_size == 0
                    else "not an image Pillow can read (PNG, JPEG, BMP, ...) nor a .npy/.npz array"
                )
            ) from None
        except Exception as exc:  # noqa: BLE001  Pillow's decoders raise many kinds for a damaged file:
            # OSError, SyntaxError (a PNG chunk that is not one), ValueError, struct.error, EOFError, ...
            raise ImageError(f"{path}: cannot be read as an image ({_one_line(exc)})") from None


def _display(path: str, header: safeio.ArrayHeader) -> str:
    """How a picture's array is named in answers and errors: the file, or file:member for a .npz member."""
    return f"{path}:{header.key}" if header.key else path


def _arrays_from_file(path: str, room: int) -> list[tuple[str, np.ndarray]]:
    def check(headers: list[safeio.ArrayHeader]) -> None:  # from the headers, before any data is read
        count = 0
        for header in headers:
            name, shape = _display(path, header), header.shape
            if header.dtype.kind not in "iuf" or len(shape) not in (2, 3) or header.count == 0:
                raise ImageError(
                    f"{name}: expected a picture [H, W] or pictures [N, H, W] of numbers, got "
                    f"{header.dtype} {list(shape)}"
                )
            safeio.check_picture_size(shape[-1], shape[-2], name)
            count += 1 if len(shape) == 2 else shape[0]
        if count > room:
            raise TooManyPictures(path, count, room)

    try:
        arrays = [(_display(path, header), array) for header, array in safeio.read_arrays(path, path, check=check)]
    except ImageError:
        raise
    except UserError as exc:
        raise ImageError(str(exc)) from None
    for name, array in arrays:
        if array.dtype.kind == "f":
            low, high = array.min(), array.max()  # NaN and the infinities show in these two
            if not (np.isfinite(low) and np.isfinite(high)):
                raise ImageError(f"{name}: holds NaN or infinite values; a picture's pixels are finite numbers")
            if max(-float(low), float(high)) > float(np.finfo(np.float32).max):
                raise ImageError(f"{name}: holds values beyond float32's range; scale its pixels to 0-255 or 0-1")
    return arrays


def _pictures(arrays: list[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
    pictures: list[tuple[str, np.ndarray]] = []
    for name, array in arrays:
        pictures += [(name, array)] if array.ndim == 2 else [(f"{name}[{i}]", a) for i, a in enumerate(array)]
    return pictures


def _gray(picture: np.ndarray) -> np.ndarray:
    """float32 0-255 from a picture's array: floats in 0-1 are scaled to 0-255."""
    gray = picture.astype(np.float32, copy=False)  # a picture Pillow decoded is float32 already
    with np.errstate(over="ignore"):  # -3e38 becomes -inf, which to_mnist then takes as any value below the paper
        return gray * 255.0 if picture.dtype.kind == "f" and gray.max() <= 1 else gray


def load(path: str, room: int = MAX_PICTURES) -> Iterator[tuple[str, np.ndarray]]:
    """The grayscale pictures in one file, as (name, float32 [H, W] in 0-255): one for an image file, one per
    picture for .npy/.npz arrays ([H, W] or [N, H, W]; floats in 0-1 are scaled to 0-255).

    Everything about the file is checked before this returns (ImageError otherwise): an array file's headers
    (at most `room` pictures, their size, dtype and shape) before its data is read, then its values (NaN and
    infinities refused). Each picture is made float32 only as it is taken from the iterator."""
    if path.lower().endswith(ARRAY_SUFFIXES):
        pictures = _pictures(_arrays_from_file(path, room))
    else:
        if room < 1:
            raise TooManyPictures(path, 1, room)
        pictures = [(path, _gray_from_file(path))]
    return ((name, _gray(picture)) for name, picture in pictures)


def _centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    total = image.sum()
    rows, cols = np.indices(image.shape)
    return float((rows * image).sum() / total), float((cols * image).sum() / total)


def to_mnist(gray: np.ndarray, name: str = "image") -> np.ndarray:
    """MNIST's preparation of one grayscale picture (float or uint8 [H, W], 0-255): uint8 [28, 28]."""
    # Values near float32's limits overflow its sums and differences: refused below in one line, without numpy's
    # warning (two more lines on stderr).
    with np.errstate(over="ignore", invalid="ignore"):
        return _to_mnist(np.asarray(gray, dtype=np.float32), name)


def _to_mnist(gray: np.ndarray, name: str) -> np.ndarray:
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    light_background = np.median(border) > 127
    if gray.shape == (28, 28) and not light_background:
        return np.clip(np.rint(gray), 0, 255).astype(np.uint8)  # already MNIST's form
    ink = 255.0 - gray if light_background else gray
    ink = ink - np.median(255.0 - border if light_background else border)  # the paper's level becomes 0
    peak = ink.max()
    if not np.isfinite(peak):  # values near float32's limits, whose differences overflow it
        raise ImageError(f"{name}: its values span more than float32 holds; scale its pixels to 0-255 or 0-1")
    if peak <= 0:
        raise ImageError(f"{name}: no digit found (the picture is blank)")
    ink = np.clip(ink / peak, 0.0, 1.0)
    rows, cols = np.nonzero(ink > INK_THRESHOLD)
    ink = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    height, width = ink.shape
    scale = 20.0 / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    fitted = np.asarray(Image.fromarray(ink).resize(size, Image.Resampling.LANCZOS), dtype=np.float32)
    fitted = np.clip(fitted, 0.0, 1.0)
    row, col = _centre_of_mass(fitted)
    top = int(np.clip(round(13.5 - row), 0, 28 - fitted.shape[0]))
    left = int(np.clip(round(13.5 - col), 0, 28 - fitted.shape[1]))
    field = np.zeros([28, 28], np.float32)
    field[top : top + fitted.shape[0], left : left + fitted.shape[1]] = fitted
    return np.rint(field * 255).astype(np.uint8)


def grid_png(
    images: np.ndarray | Sequence[np.ndarray],
    captions: Sequence[str],
    columns: int = 8,
    scale: int = 3,
    title: str = "",
) -> bytes:
    """uint8 [28, 28] digits in a grid, each enlarged `scale` times with its caption beneath, as PNG bytes.

    The captions are also stored in the PNG's text chunk ("captions", one per line), so tools can read them."""
    cell_w, caption_h = 28 * scale, 14
    cell_h = 28 * scale + caption_h
    rows = max(1, -(-len(images) // columns))
    width = max(1, min(len(images), columns)) * cell_w
    sheet = Image.new("L", (max(width, 8 * len(title)), rows * cell_h + (14 if title else 0)), 255)
    draw = ImageDraw.Draw(sheet)
    top = 0
    if title:
        draw.text((2, 1), title, fill=0)
        top = 14
    for i, (image, caption) in enumerate(zip(images, captions, strict=True)):
        x, y = (i % columns) * cell_w, top + (i // columns) * cell_h
        sheet.paste(Image.fromarray(image).resize((28 * scale, 28 * scale), Image.Resampling.NEAREST), (x, y))
        draw.text((x + 2, y + 28 * scale + 1), caption, fill=0)
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", SOFTWARE)
    info.add_text("captions", "\n".join(captions))
    if title:
        info.add_text("Title", title)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def drawn_by_distmnist(path: str) -> bool:
    """Whether the regular file at `path` is a PNG whose text says grid_png drew it; read from its header and the
    text chunks before its pixels, never decoding them. False for anything else, whatever is wrong with it."""
    try:
        with safeio.open_regular(path) as f, Image.open(f, formats=["PNG"]) as image:
            return image.info.get("Software") == SOFTWARE
    except Exception:  # noqa: BLE001  a file that is not such a PNG, in whichever way, is not ours
        return False
