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
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageOps, PngImagePlugin, UnidentifiedImageError

from distmnist.common import safeio
from distmnist.common.errors import UserError

ARRAY_SUFFIXES = (".npy", ".npz")
INK_THRESHOLD = 0.25  # of full ink: pixels above it bound the crop


class ImageError(UserError):
    """One input file cannot be used; the message names it and says why."""


def _gray_from_file(path: str) -> np.ndarray:
    try:
        with warnings.catch_warnings():  # Pillow's own bomb warning: the size check below says it in one line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)  # reads the header only
        with opened as image:
            safeio.check_picture_size(image.width, image.height, path)  # before a pixel is decoded
            image = ImageOps.exif_transpose(image)  # photos: the orientation their camera recorded
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                # A transparent background is the paper: composite on white (strokes stay dark).
                background = Image.new("RGBA", image.size, (255, 255, 255, 255))
                image = Image.alpha_composite(background, image.convert("RGBA"))
            return np.asarray(image.convert("L"), dtype=np.float32)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except Image.DecompressionBombError:  # past Pillow's own bound, refused by Pillow as it opens the header
        raise ImageError(f"{path}: declares more than {Image.MAX_IMAGE_PIXELS * 2:,} pixels, more than the "
                         f"{safeio.MAX_PICTURE_PIXELS / 1e6:,.0f} megapixels a picture of a digit needs; scale it "
                         "down") from None
    except safeio.TooLarge as exc:
        raise ImageError(str(exc)) from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image") from None
    except UnidentifiedImageError:
        size = os.path.getsize(path)
        raise ImageError(f"{path}: " + ("an empty file" if size == 0 else
                                        "not an image Pillow can read (PNG, JPEG, BMP, ...) nor a .npy/.npz "
                                        "array")) from None
    except (OSError, ValueError) as exc:
        raise ImageError(f"{path}: cannot be read as an image ({exc})") from None


def _arrays_from_file(path: str) -> List[Tuple[str, np.ndarray]]:
    try:
        safeio.check_arrays(path, path)  # every header, before any array is read
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                arrays = [(f"{path}:{name}", loaded[name]) for name in loaded.files]
        else:
            arrays = [(path, loaded)]
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an array file") from None
    except UserError as exc:
        raise ImageError(str(exc)) from None
    except (OSError, ValueError, EOFError) as exc:
        raise ImageError(f"{path}: not a readable numpy array file ({exc})") from None
    images = []
    for name, array in arrays:
        if array.ndim == 2:
            images.append((name, array))
        elif array.ndim == 3 and array.shape[0] > 0:
            images += [(f"{name}[{i}]", a) for i, a in enumerate(array)]
        else:
            raise ImageError(f"{name}: expected an image [H, W] or images [N, H, W], got shape {array.shape}")
    for name, array in images:
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)) or \
                min(array.shape) == 0:
            raise ImageError(f"{name}: expected numbers in a non-empty [H, W] array, got {array.dtype} {array.shape}")
        try:
            safeio.check_picture_size(array.shape[1], array.shape[0], name)
        except safeio.TooLarge as exc:
            raise ImageError(str(exc)) from None
    return [(name, array.astype(np.float32) * (255.0 if array.dtype.kind == "f" and array.max() <= 1 else 1.0))
            for name, array in images]


def load(path: str) -> List[Tuple[str, np.ndarray]]:
    """The grayscale pictures in one file, as (name, float32 [H, W] in 0-255): one for an image file, one per
    image for .npy/.npz arrays ([H, W] or [N, H, W]; floats in 0-1 are scaled to 0-255)."""
    if path.lower().endswith(ARRAY_SUFFIXES):
        return _arrays_from_file(path)
    return [(path, _gray_from_file(path))]


def _centre_of_mass(image: np.ndarray) -> Tuple[float, float]:
    total = image.sum()
    rows, cols = np.indices(image.shape)
    return float((rows * image).sum() / total), float((cols * image).sum() / total)


def to_mnist(gray: np.ndarray, name: str = "image") -> np.ndarray:
    """MNIST's preparation of one grayscale picture (float or uint8 [H, W], 0-255): uint8 [28, 28]."""
    gray = np.asarray(gray, dtype=np.float32)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    light_background = np.median(border) > 127
    if gray.shape == (28, 28) and not light_background:
        return np.clip(np.rint(gray), 0, 255).astype(np.uint8)  # already MNIST's form
    ink = 255.0 - gray if light_background else gray
    ink = ink - np.median(255.0 - border if light_background else border)  # the paper's level becomes 0
    if ink.max() <= 0:
        raise ImageError(f"{name}: no digit found (the picture is blank)")
    ink = np.clip(ink / ink.max(), 0.0, 1.0)
    rows, cols = np.nonzero(ink > INK_THRESHOLD)
    ink = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    height, width = ink.shape
    scale = 20.0 / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    fitted = np.asarray(Image.fromarray(ink).resize(size, Image.Resampling.LANCZOS), dtype=np.float32)
    fitted = np.clip(fitted, 0.0, 1.0)
    row, col = _centre_of_mass(fitted)
    top = int(np.clip(round(13.5 - row), 0, 28 - fitted.shape[0]))
    left = int(np.clip(round(13.5 - col), 0, 28 - fitted.shape[1]))
    field = np.zeros([28, 28], np.float32)
    field[top:top + fitted.shape[0], left:left + fitted.shape[1]] = fitted
    return np.rint(field * 255).astype(np.uint8)


def grid_png(images: Sequence[np.ndarray], captions: Sequence[str], columns: int = 8, scale: int = 3,
             title: str = "") -> bytes:
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
    for i, (image, caption) in enumerate(zip(images, captions)):
        x, y = (i % columns) * cell_w, top + (i // columns) * cell_h
        sheet.paste(Image.fromarray(image).resize((28 * scale, 28 * scale), Image.Resampling.NEAREST), (x, y))
        draw.text((x + 2, y + 28 * scale + 1), caption, fill=0)
    info = PngImagePlugin.PngInfo()
    info.add_text("captions", "\n".join(captions))
    if title:
        info.add_text("Title", title)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()
