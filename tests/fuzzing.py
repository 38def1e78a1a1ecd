"""A seeded mutation fuzzer for the files distmnist reads: pictures of every format Pillow reads, .npy/.npz arrays,
IDX files, checkpoint indexes, run_config.json and history.json, and run claims.

Each kind has seeds (well-formed files, made here) and mutators that know the format: bit flips and truncation for
all, and for each kind the edits that reach past its first check (a PNG chunk's length field, a chunk after the
image data with its CRC made right, a header's dimensions blown up, a zip member marked encrypted or compressed by a
method zipfile lacks, a float array of NaN and infinities, JSON nested a hundred thousand deep, a checkpoint index
naming a file outside its folder). `cases(kind, count)` is the same list for the same count on every machine: a
case that fails is named by its kind, seed and number, and `case(kind, name)` gives its bytes back.
"""

import dataclasses
import gzip
import io
import json
import math
import random
import socket
import struct
import zipfile
import zlib
from collections.abc import Callable

import numpy as np

SEED = "distmnist-fuzz-1"


@dataclasses.dataclass(frozen=True)
class Case:
    kind: str
    name: str  # "<seed name>#<number>": the seed it was made from, and which of its mutations
    suffix: str  # the file name's ending the reader decides by (".png", ".npy", ...)
    data: bytes
    how: str  # the mutations applied, for a failure's message

    def __str__(self) -> str:
        return f"{self.kind} case {self.name} ({self.how}; {len(self.data):,} bytes)"


def _rng(*labels) -> random.Random:
    return random.Random(":".join(map(str, (SEED,) + labels)))  # str seeds hash the same on every machine


# --- mutators over bytes --------------------------------------------------------------------------------------

INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


def bit_flips(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    out = bytearray(data)
    flips = rng.randint(1, max(1, len(out) // 64))
    for _ in range(flips):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out), f"{flips} bit flips"


def truncate(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    at = rng.randrange(len(data))
    return data[:at], f"truncated at {at}"


def interesting_value(rng: random.Random, data: bytes, within: int = 0) -> tuple[bytes, str]:
    """A boundary value (0, 0x7FFFFFFF, 0xFFFF, ...) written over 1, 2 or 4 bytes, either byte order; within > 0:
    in the first `within` bytes (a header's fields)."""
    size = rng.choice((1, 2, 4))
    end = min(len(data), within) if within else len(data)
    if end < size:
        return data, "too short for a field"
    at = rng.randrange(end - size + 1)
    value = rng.choice(INTERESTING) & ((1 << 8 * size) - 1)
    order = rng.choice("<>")
    packed = struct.pack(order + {1: "B", 2: "H", 4: "I"}[size], value)
    return data[:at] + packed + data[at + size :], f"{size}-byte {value:#x} ({order}) at {at}"


def dimension_blowup(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Large 16- and 32-bit values at aligned places of the first 64 bytes, where headers keep their sizes."""
    out, places = data, []
    for _ in range(rng.randint(1, 3)):
        out, how = interesting_value(rng, out, within=64)
        places.append(how)
    return out, "header fields " + ", ".join(places)


def chunk_edit(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """A stretch of the file deleted, repeated or replaced by random bytes."""
    if len(data) < 2:
        return data + b"\0", "a byte added"
    start = rng.randrange(len(data))
    length = rng.randint(1, min(256, len(data) - start))
    what = rng.choice(("deleted", "repeated", "randomised"))
    piece = data[start : start + length]
    if what == "deleted":
        piece = b""
    elif what == "repeated":
        piece = piece * rng.randint(2, 64)
    else:
        piece = bytes(rng.randrange(256) for _ in range(length))
    return data[:start] + piece + data[start + length :], f"{length} bytes at {start} {what}"


def appended(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    tail = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    return data + tail, f"{len(tail)} bytes appended"


GENERIC = (bit_flips, truncate, interesting_value, dimension_blowup, chunk_edit, appended)


def mutate(rng: random.Random, data: bytes, special: tuple[Callable, ...] = ()) -> tuple[bytes, str]:
    """One to three mutations, the format's own ones as likely as all the generic ones together."""
    hows = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        pool = special if special and rng.random() < 0.5 else GENERIC
        mutator = rng.choice(pool)
        try:
            data, how = mutator(rng, data) if data else (b"\0", "a byte")
        except (ValueError, TypeError, IndexError, KeyError, struct.error, zipfile.BadZipFile):  # mutated past its
            data, how = bit_flips(rng, data)  # mutator's reach already: its bytes, then
        hows.append(how)
    return data, "; ".join(hows)


# --- pictures -------------------------------------------------------------------------------------------------


def _digit(size=(24, 20)) -> np.ndarray:
    """A dark stroke on light paper, the kind of picture predict is given."""
    width, height = size
    picture = np.full((height, width), 235, np.uint8)
    picture[3 : height - 3, width // 2 - 2 : width // 2 + 2] = 20
    picture[3:6, width // 2 - 6 : width // 2 + 2] = 20
    return picture


def _saved_by_pillow() -> dict[str, tuple[str, bytes]]:
    """format -> (suffix, bytes) for every format Pillow can write and read back here."""
    from PIL import Image

    Image.init()
    digit = _digit()
    seeds = {}
    for name in sorted(Image.SAVE):
        if name not in Image.OPEN and name != "MPO":
            continue  # write-only (PDF, PALM)
        for mode in ("L", "RGB", "1", "P", "RGBA"):
            image = Image.fromarray(digit).convert(mode)
            buffer = io.BytesIO()
            try:
                image.save(buffer, format=name)
                with Image.open(io.BytesIO(buffer.getvalue())) as back:
                    back.load()
            except Exception:  # noqa: BLE001  this format takes another mode, or this build lacks its codec
                continue
            extension = next((e for e, f in Image.EXTENSION.items() if f == name), "." + name.lower())
            seeds[name] = (extension, buffer.getvalue())
            break
    return seeds


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _handmade() -> dict[str, tuple[str, bytes]]:
    """Headers Pillow identifies, for the formats it reads but does not write: what mutations start from."""
    width, height = 24, 20
    pixels = _digit().tobytes()
    dib = bytearray(_saved_by_pillow_one("BMP")[14:])  # a BMP's bitmap, its height doubled for the cursor's mask
    struct.pack_into("<i", dib, 8, 2 * height)
    cur = (
        struct.pack("<HHH", 0, 2, 1)
        + struct.pack("<BBBBHHII", width, height, 0, 0, 1, 1, len(dib) + 80, 22)
        + bytes(dib)
        + b"\0" * 80
    )
    pcx = _saved_by_pillow_one("PCX")
    dcx = struct.pack("<I", 987654321) + struct.pack("<II", 12, 0) + pcx if pcx else b""
    fits_header = "".join(
        card.ljust(80)
        for card in (
            "SIMPLE  =                    T",
            "BITPIX  =                    8",
            "NAXIS   =                    2",
            f"NAXIS1  = {width:20d}",
            f"NAXIS2  = {height:20d}",
            "END",
        )
    )
    fits = fits_header.ljust(2880).encode() + pixels.ljust(2880, b"\0")
    gbr = struct.pack(">IIIII", 28 + 6, 2, width, height, 1) + b"GIMP" + struct.pack(">I", 10) + b"digit\0" + pixels
    imt = (f"width {width}\nheight {height}\npixel n8\n\x0c").encode() + pixels
    mcidas_words = [0] * 64
    mcidas_words[1:12] = [4, 0, 0, 0, 0, 0, 0, height, width, 1, 1]
    mcidas_words[13] = 1
    mcidas_words[33], mcidas_words[34] = 256, 0
    mcidas = struct.pack(">64i", *mcidas_words) + pixels
    mpeg = b"\x00\x00\x01\xb3" + struct.pack(">I", (width << 20) | (height << 8)) + b"\0" * 64
    pixar = bytearray(b"\x80\xe8\x00\x00" + b"\0" * 1020)
    struct.pack_into("<HHxxxxHH", pixar, 416, height, width, 14, 2)  # RGB, the one mode Pillow's reader knows
    pixar = bytes(pixar) + pixels * 3
    psd = (
        b"8BPS"
        + struct.pack(">H6xHIIHH", 1, 1, height, width, 8, 1)
        + struct.pack(">I", 0)
        + struct.pack(">I", 0)
        + struct.pack(">I", 0)
        + struct.pack(">H", 0)
        + pixels
    )
    sun = struct.pack(">8I", 0x59A66A95, width, height, 8, len(pixels), 1, 0, 0) + pixels
    rows = "".join('"' + "".join("b" if v < 128 else "a" for v in row) + '",\n' for row in _digit())
    xpm = (
        "/* XPM */\nstatic char *d[] = {\n"
        + f'"{width} {height} 2 1",\n'
        + '"a c #FFFFFF",\n"b c #000000",\n'
        + rows
        + "};\n"
    ).encode()
    xv = b"P7 332\n#XVVERSION:\n#END_OF_COMMENTS\n" + f"{width} {height} 255\n".encode() + pixels
    eps = (
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 24 20\n%%EndComments\n"
        b"/Helvetica findfont 12 scalefont setfont 2 4 moveto (7) show\n%%EOF\n"
    )
    grib = b"GRIB" + b"\0\0\0\x01" + b"\0" * 64
    bufr = b"BUFR" + b"\0\0\0\x04" + b"\0" * 64
    hdf5 = b"\x89HDF\r\n\x1a\n" + b"\0" * 64
    wmf = (
        struct.pack("<IHhhhhHI", 0x9AC6CDD7, 0, 0, 0, width * 20, height * 20, 1440, 0)
        + b"\0\0"
        + b"\x01\x00\x09\x00"
        + b"\0" * 64
    )
    ftex = (
        b"FTEX"
        + struct.pack("<i", 0x4E)
        + struct.pack("<ii", width, height)
        + struct.pack("<i", 0)
        + struct.pack("<i", 1)
        + struct.pack("<i", 1)
        + struct.pack("<ii", 1, 48)
        + struct.pack("<i", 0)
        + b"\0" * (48 - 40)
        + struct.pack("<I", len(pixels) * 3)
        + pixels * 3
    )
    pcd = b"\0" * 2048 + b"PCD_IPI" + b"\0" * (1539 - 7) + b"\0" * 4096
    fli = bytearray(128)
    struct.pack_into("<IHHHHHH", fli, 0, 128 + 16 + 6 + 768, 0xAF11, 1, width, height, 8, 0)
    struct.pack_into("<I", fli, 16, 5)
    frame = struct.pack("<IHH8x", 16 + 6 + 768 + 6, 0xF1FA, 1)
    colors = struct.pack("<IH", 6 + 2 + 768, 11) + struct.pack("<HBB", 1, 0, 0) + bytes(768)
    fli = bytes(fli) + frame + colors
    iptc = (
        b"\x1c\x03\x3c\x00\x02\x01\x00"
        + b"\x1c\x03\x14\x00\x02"
        + struct.pack(">H", width)
        + b"\x1c\x03\x1e\x00\x02"
        + struct.pack(">H", height)
        + b"\x1c\x03\x78\x00\x01\x01"
        + b"\x1c\x08\x0a"
        + struct.pack(">H", len(pixels))
        + pixels
    )
    return {
        "CUR": (".cur", cur),
        "DCX": (".dcx", dcx),
        "FITS": (".fits", fits),
        "GBR": (".gbr", gbr),
        "IMT": (".imt", imt),
        "MCIDAS": (".area", mcidas),
        "MPEG": (".mpg", mpeg),
        "PIXAR": (".pxr", pixar),
        "PSD": (".psd", psd),
        "SUN": (".ras", sun),
        "XPM": (".xpm", xpm),
        "XVTHUMB": (".xv", xv),
        "EPS": (".eps", eps),
        "GRIB": (".grib", grib),
        "BUFR": (".bufr", bufr),
        "HDF5": (".h5", hdf5),
        "WMF": (".wmf", wmf),
        "FTEX": (".ftc", ftex),
        "PCD": (".pcd", pcd),
        "FLI": (".fli", fli),
        "IPTC": (".iim", iptc),
    }


_PILLOW_SEEDS: dict[str, tuple[str, bytes]] = {}


def _saved_by_pillow_one(name: str) -> bytes:
    if not _PILLOW_SEEDS:
        _PILLOW_SEEDS.update(_saved_by_pillow())
    return _PILLOW_SEEDS.get(name, ("", b""))[1]


def picture_seeds() -> dict[str, tuple[str, bytes]]:
    """format -> (suffix, a well-formed file of it), for Pillow's formats; the test checks that every format
    Pillow reads here has one that Pillow identifies as that format."""
    _saved_by_pillow_one("PNG")
    return {**_handmade(), **_PILLOW_SEEDS}


def png_foreign_chunk(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """A chunk Pillow does not know, its CRC right, before or after the image data (after IDAT: the old crash)."""
    kind = bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(4))
    body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 32)))
    at = data.rfind(b"IEND") - 4 if rng.random() < 0.6 else 33
    return data[:at] + _png_chunk(kind, body) + data[at:], f"chunk {kind!r} of {len(body)} bytes at {at}"


def png_length_field(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """A chunk's length field set to a boundary value (the chunk's type and CRC left)."""
    offsets, at = [], 8
    while at + 8 <= len(data):
        offsets.append(at)
        (length,) = struct.unpack(">I", data[at : at + 4])
        at += 12 + length
    at = rng.choice(offsets)
    value = rng.choice(INTERESTING)
    return data[:at] + struct.pack(">I", value) + data[at + 4 :], f"chunk length at {at} set to {value:#x}"


def png_dimensions(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """IHDR's width and height blown up, its CRC made right (so the reader believes them)."""
    width, height = rng.choice(INTERESTING[1:]), rng.choice(INTERESTING[1:])
    body = struct.pack(">II", width, height) + data[24:29]
    return data[:8] + _png_chunk(b"IHDR", body) + data[33:], f"IHDR {width}x{height}"


PICTURE_MUTATORS = {"PNG": (png_foreign_chunk, png_length_field, png_dimensions)}


# --- arrays ---------------------------------------------------------------------------------------------------


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _npz(compressed: bool, **arrays) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def array_seeds() -> dict[str, tuple[str, bytes]]:
    digits = np.stack([_digit((28, 28))] * 3)
    return {
        "npy-uint8": (".npy", _npy(digits)),
        "npy-float32": (".npy", _npy(digits.astype(np.float32) / 255)),
        "npy-2d": (".npy", _npy(_digit())),
        "npz": (".npz", _npz(False, a=digits, b=_digit())),
        "npz-compressed": (".npz", _npz(True, digits=digits.astype(np.float64))),
    }


DTYPES = (
    "'<f4'",
    "'<f8'",
    "'<f2'",
    "'>i8'",
    "'|O'",
    "'<c8'",
    "'|V4'",
    "'|S3'",
    "'<U2'",
    "'|b1'",
    "'<M8[s]'",
    "[('a', '<f4')]",
    "('<f4', (2,))",
    "'<f16'",
    "'?'",
    "'<i0'",
    "'wat'",
    "{}",
)
SHAPES = (
    "(0,)",
    "(3,)",
    "(2, 2, 2, 2)",
    "(-1, 28)",
    "(2**31, 2**31, 2**31)",
    "(1099511627776, 1, 1)",
    "(16777216, 1, 1)",
    "(28, 28, 0)",
    "(4000, 6001)",
    "(1, 100000, 100000)",
    "()",
    "(3.5, 2)",
    "'28'",
    "(True, 28)",
    "(28, 28" + ", 1" * 40 + ")",
)


def _npy_parts(data: bytes) -> tuple[bytes, str, bytes]:
    """(magic and version, header text, data) of a .npy file."""
    major = data[6]
    field = "<H" if major == 1 else "<I"
    width = struct.calcsize(field)
    (length,) = struct.unpack(field, data[8 : 8 + width])
    return data[:8], data[8 + width : 8 + width + length].decode("latin-1"), data[8 + width + length :]


def _npy_join(start: bytes, header: str, body: bytes) -> bytes:
    text = header.encode("latin-1")
    field = "<H" if start[6] == 1 and len(text) < 65536 else "<I"
    start = start[:6] + (b"\x01\x00" if field == "<H" else b"\x02\x00")
    return start + struct.pack(field, len(text)) + text + body


def npy_header(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """The header's dtype, shape or order replaced (the data left as it is)."""
    if data[:6] != b"\x93NUMPY":
        return bit_flips(rng, data)
    start, header, body = _npy_parts(data)
    field = rng.choice(("descr", "shape", "fortran_order", "length"))
    if field == "descr":
        value = rng.choice(DTYPES)
        header = header.replace(
            header[header.index("'descr':") : header.index(", 'fortran_order'")], f"'descr': {value}"
        )
    elif field == "shape":
        value = rng.choice(SHAPES)
        header = (
            header[: header.index("'shape':")]
            + f"'shape': {value}, }}".ljust(len(header) - header.index("'shape':") - 1)
            + "\n"
        )
    elif field == "fortran_order":
        value = rng.choice(("True", "1", "'yes'", "None"))
        header = header.replace("'fortran_order': False", f"'fortran_order': {value}")
    else:
        value = rng.choice(INTERESTING)
        width = 2 if start[6] == 1 else 4
        return start + struct.pack("<H" if width == 2 else "<I", value & ((1 << 8 * width) - 1)) + data[
            8 + width :
        ], f".npy header length set to {value:#x}"
    return _npy_join(start, header, body), f".npy header {field} = {value}"


def non_finite_payload(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """A float array's values replaced by NaN, infinities, float64's extremes or subnormals."""
    if data[:6] != b"\x93NUMPY":
        return bit_flips(rng, data)
    start, header, body = _npy_parts(data)
    dtype = rng.choice(("<f4", "<f8", "<f2", ">f8"))
    value = rng.choice((np.nan, np.inf, -np.inf, 1e308, -1e308, 3.5e38, 5e-324, 1e-45, 0.0))
    shape = header[header.index("'shape':") + 8 : header.index("}")].rstrip(", ")
    dims = [int(d) for d in shape.strip(" ()").split(",") if d.strip()]
    if not 0 <= math.prod(dims) <= 100_000:  # a shape blown up by an earlier mutation: not one to fill
        return bit_flips(rng, data)
    array = np.full(dims, 0.5, np.dtype(dtype))
    flat = array.reshape(-1)
    with np.errstate(over="ignore"):  # float64's extremes become float16's infinities: wanted
        for i in rng.sample(range(flat.size), k=min(flat.size, rng.randint(1, 5))):
            flat[i] = value
        if rng.random() < 0.2:
            flat[:] = value
    return _npy(array), f"{dtype} with {value} in it"


def _zip_offsets(data: bytes) -> list[int]:
    """Where the zip's local and central headers start."""
    found, at = [], 0
    while True:
        at = data.find(b"PK", at)
        if at < 0:
            return found
        if data[at + 2 : at + 4] in (b"\x03\x04", b"\x01\x02", b"\x05\x06"):
            found.append(at)
        at += 2


def zip_member(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """A zip header's field set: the encryption flag, the compression method, a size, the CRC, a name's length,
    the directory's offset; or a member's data mutated."""
    offsets = _zip_offsets(data)
    if not offsets:
        return bit_flips(rng, data)
    at = rng.choice(offsets)
    signature = data[at + 2 : at + 4]
    # Offsets of the fields in local (03 04) and central (01 02) headers, and the end record (05 06).
    fields = {
        b"\x03\x04": {
            "flags": (6, "H"),
            "method": (8, "H"),
            "crc": (14, "I"),
            "compressed size": (18, "I"),
            "size": (22, "I"),
            "name length": (26, "H"),
            "extra length": (28, "H"),
        },
        b"\x01\x02": {
            "flags": (8, "H"),
            "method": (10, "H"),
            "crc": (16, "I"),
            "compressed size": (20, "I"),
            "size": (24, "I"),
            "name length": (28, "H"),
            "extra length": (30, "H"),
            "local header offset": (42, "I"),
        },
        b"\x05\x06": {
            "entries": (10, "H"),
            "directory size": (12, "I"),
            "directory offset": (16, "I"),
            "comment length": (20, "H"),
        },
    }[signature]
    name = rng.choice(sorted(fields))
    offset, kind = fields[name]
    if name == "flags":
        value = rng.choice((0x1, 0x41, 0x8, 0x800, 0xFFFF))
    elif name == "method":
        value = rng.choice((1, 6, 9, 12, 14, 19, 93, 95, 98, 99, 0xFFFF))
    else:
        value = rng.choice(INTERESTING) & (0xFFFF if kind == "H" else 0xFFFFFFFF)
    if at + offset + struct.calcsize(kind) > len(data):
        return truncate(rng, data)
    return (
        data[: at + offset] + struct.pack("<" + kind, value) + data[at + offset + struct.calcsize(kind) :],
        f"zip {name} at {at} set to {value:#x}",
    )


def npz_member_rewritten(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """A .npz whose members are mutated .npy files, stored (so the mutation reaches the reader), and member names
    that are not array names."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = {info.filename: archive.read(info) for info in archive.infolist()}
    except Exception:  # noqa: BLE001  already mutated past reading: mutate its bytes
        return bit_flips(rng, data)
    name = rng.choice(sorted(members))
    members[name], how = rng.choice((npy_header, non_finite_payload, bit_flips, truncate))(rng, members[name])
    if rng.random() < 0.2:
        members[rng.choice(("../x.npy", "", "a/b.npy", "x" * 300 + ".npy", "a.npy"))] = members[name]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", rng.choice((zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED))) as archive:
        for key, value in members.items():
            archive.writestr(key, value)
    return buffer.getvalue(), f"member {name}: {how}"


def float32_extremes(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """A float32 picture on paper or ink near float32's limits (its sums and differences overflow)."""
    paper, ink = rng.choice(((3.4e38, -3.4e38), (-3.4e38, 3.4e38), (3e38, 0.0), (1e-45, 3.4e38), (0.0, 3.4e38)))
    picture = np.full((rng.randint(2, 40), rng.randint(2, 40)), paper, np.float32)
    picture[1:-1, picture.shape[1] // 2] = ink
    return _npy(picture), f"float32 paper {paper}, ink {ink}"


ARRAY_MUTATORS = (npy_header, non_finite_payload, zip_member, npz_member_rewritten, float32_extremes)


# --- IDX files ------------------------------------------------------------------------------------------------


def idx(array: np.ndarray) -> bytes:
    return struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def idx_dimensions(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """The header's dimensions blown up or zeroed (2^31 x 2^31 x 4 wrapped to 0 in numpy), or its magic edited."""
    ndim = data[3] if len(data) > 3 else 1
    if rng.random() < 0.2:
        magic = rng.choice((b"\0\0\x08\x03", b"\0\0\x08\x01", b"\0\0\x0d\x03", b"\0\0\x08\xff", b"\x08\0\0\x03"))
        return magic + data[4:], f"magic {magic.hex()}"
    dims = [rng.choice((0, 1, 28, 2**31, 2**32 - 1, 2**16, 60000)) for _ in range(ndim)]
    return data[:4] + struct.pack(f">{ndim}I", *dims) + data[4 + 4 * ndim :], f"dimensions {dims}"


def idx_gzip(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """The file gzipped, then the gzip's own bytes mutated (a stream cut short, a bad CRC, trailing data)."""
    packed = gzip.compress(data, mtime=0)
    packed, how = rng.choice((bit_flips, truncate, appended, chunk_edit))(rng, packed)
    return packed, f"gzipped, then {how}"


IDX_MUTATORS = (idx_dimensions,)


# --- JSON: run_config.json, history.json, claims --------------------------------------------------------------


def nesting_bomb(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    depth = rng.choice((1000, 10_000, 100_000))
    opener = rng.choice(("[", '{"a":'))
    inner = opener * depth + "1" + ("]" if opener == "[" else "}") * depth
    text = data.decode("utf-8", "replace")
    if _is_json_object(text):
        value = json.loads(text)
        key = rng.choice(sorted(value) or ["x"])
        value[key] = "@BOMB@"
        return json.dumps(value).replace('"@BOMB@"', inner).encode(), f"{key} nested {depth} deep"
    return inner.encode(), f"nested {depth} deep"


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


ODD_VALUES = (
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e400",
    "1" + "0" * 400,
    "-1",
    "0",
    "true",
    "null",
    "[]",
    "{}",
    '""',
    '"\\u0000"',
    '"a\\nb"',
    '"a\\u000bb"',
    '"\\ud800"',
    '"..\\/..\\/etc"',
    '"' + "x" * 3000 + '"',
    "4294967296",
    "9223372036854775808",
    "1.5",
    '"1"',
    "[1, 2]",
    '{"a": 1}',
    '"gs://bucket/x"',
    '"/"',
)


def json_value(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """One field's value replaced by an odd one (NaN, 10^400, a NUL, a newline, another type), removed, or a
    field added."""
    text = data.decode("utf-8", "replace")
    if not _is_json_object(text):
        return bit_flips(rng, data)
    value = json.loads(text)
    key = rng.choice(sorted(value) or ["x"])
    what = rng.random()
    if what < 0.15:
        value.pop(key, None)
        return json.dumps(value).encode(), f"{key} removed"
    odd = rng.choice(ODD_VALUES)
    if what < 0.25:
        key = rng.choice(("", "\u0000", "x" * 200, "__proto__", key + " "))
    value[key] = "@ODD@"
    return json.dumps(value).replace('"@ODD@"', odd).encode(), f"{key!r} = {odd[:40]}"


def json_text(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """The text as a whole: not UTF-8, a byte-order mark, a duplicate key, trailing garbage, another JSON type."""
    choice = rng.randrange(6)
    if choice == 0:
        return data.decode("utf-8", "replace").encode("utf-16"), "UTF-16"
    if choice == 1:
        return b"\xef\xbb\xbf" + data, "a byte-order mark"
    if choice == 2:
        return data.rstrip()[:-1] + b', "step": 1, "step": "x"}', "duplicate keys"
    if choice == 3:
        return data + b"\n{}", "a second document"
    if choice == 4:
        return rng.choice((b"[]", b"null", b"1", b'"{}"', b"\xff\xfe\x00", b" " * 5000)), "another JSON type"
    return data.replace(b'"', b"'"), "single quotes"


JSON_MUTATORS = (nesting_bomb, json_value, json_value, json_text)


# --- checkpoint indexes ---------------------------------------------------------------------------------------


def index_text(names: list[str], latest: str) -> bytes:
    """A checkpoint index as tf.train.CheckpointManager writes it."""
    lines = [f'model_checkpoint_path: "{latest}"'] + [f'all_model_checkpoint_paths: "{n}"' for n in names]
    lines += [f"all_model_checkpoint_timestamps: {1765000000.5 + i}" for i in range(len(names))]
    lines.append("last_preserved_timestamp: 1764999999.25")
    return ("\n".join(lines) + "\n").encode()


ODD_NAMES = (
    "ckpt-999",
    "../ckpt-12",
    "/tmp/ckpt-12",
    "ckpt-12/../ckpt-12",
    "",
    "ckpt-",
    "ckpt--1",
    "ckpt-1e3",
    "ckpt-" + "9" * 30,
    "ckpt-12\\n",
    "ckpt-\\000",
    "checkpoint",
    "ckpt-12.index",
    "gs://b/ckpt-12",
    "ckpt-\\303\\251",
    "ckpt-\\377",
)
ODD_NUMBERS = ("nan", "inf", "-inf", "1e400", "-1", "0", "18446744073709551616", "1.5e-320", '"1"', "x")


def index_edit(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """A line removed, repeated or moved; a name or a time replaced by an odd one; an unknown field."""
    lines = data.decode("utf-8", "replace").splitlines()
    choice = rng.randrange(5)
    if choice == 0 and lines:
        del lines[rng.randrange(len(lines))]
        how = "a line removed"
    elif choice == 1 and lines:
        i = rng.randrange(len(lines))
        lines.insert(rng.randrange(len(lines) + 1), lines[i])
        how = "a line repeated"
    elif choice == 2:
        i = rng.randrange(len(lines)) if lines else 0
        name = rng.choice(ODD_NAMES)
        field = rng.choice(("model_checkpoint_path", "all_model_checkpoint_paths"))
        lines.insert(i, f'{field}: "{name}"')
        how = f'{field} "{name}"'
    elif choice == 3:
        number = rng.choice(ODD_NUMBERS)
        field = rng.choice(("all_model_checkpoint_timestamps", "last_preserved_timestamp"))
        lines.append(f"{field}: {number}")
        how = f"{field}: {number}"
    else:
        field = rng.choice(
            (
                "unknown_field: 1",
                "model_checkpoint_path {",
                "[ext]: 1",
                "# comment",
                "\x00",
                'all_model_checkpoint_paths: ["ckpt-12", "ckpt-18"]',
            )
        )
        lines.insert(rng.randrange(len(lines) + 1), field)
        how = f"{field!r} added"
    return ("\n".join(lines) + "\n").encode(), how


INDEX_MUTATORS = (index_edit, index_edit)


# --- the cases ------------------------------------------------------------------------------------------------


def seeds(kind: str) -> dict[str, tuple[str, bytes]]:
    """seed name -> (suffix, bytes) for a kind of file."""
    if kind == "picture":
        return picture_seeds()
    if kind == "array":
        return array_seeds()
    if kind == "idx":
        digits = np.stack([_digit((28, 28))] * 4)
        return {"images": ("-idx3-ubyte", idx(digits)), "labels": ("-idx1-ubyte", idx(np.arange(4, dtype=np.uint8)))}
    if kind == "mnist_npz":
        digits = np.stack([_digit((28, 28))] * 4)
        labels = np.arange(4, dtype=np.uint8)
        return {"mnist": (".npz", _npz(True, x_train=digits, y_train=labels, x_test=digits, y_test=labels))}
    if kind == "index":
        return {"index": ("", index_text(["ckpt-12", "ckpt-18", "ckpt-24"], "ckpt-24"))}
    if kind == "run_config":
        return {"run_config": (".json", json.dumps(run_config()).encode())}
    if kind == "history":
        return {"history": (".json", json.dumps(HISTORY).encode())}
    if kind == "claim":
        here = {**CLAIM, "host": socket.gethostname(), "boot_id": _boot_id()}  # a holder on this host: its pid judged
        return {
            "lock": (".claim", json.dumps(CLAIM).encode()),
            "lease": (".claim", json.dumps({**CLAIM, "beat": 1765000000.0}).encode()),
            "lease-here": (".claim", json.dumps({**here, "beat": 1765000000.0}).encode()),
        }
    raise ValueError(kind)


def run_config() -> dict:
    """A run's settings as distmnist.train records them (logdir `logs`, run `r`, relative to the working folder)."""
    from distmnist.common.config import TrainConfig

    return dataclasses.asdict(TrainConfig(logdir="logs", run_name="r", max_steps=24, batch_size=16))


HISTORY = {"loss": [[0, 2.3], [2, 2.1]], "accuracy": [[0, 0.1], [6, 0.5]], "step": 6}
CLAIM = {
    "host": "elsewhere",
    "boot_id": "b",
    "pid": 1,
    "started": 1,
    "since": "2026-12-07T00:00:00+00:00",
    "token": "0123456789abcdef",
}


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def fresh_lease(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """A heartbeat far in the future (a fresh lease: refused, naming its holder), and one more field odd."""
    text = data.decode("utf-8", "replace")
    if not _is_json_object(text):
        return bit_flips(rng, data)
    fresh = json.dumps({**json.loads(text), "beat": 1e12}).encode()
    mutated, how = json_value(rng, fresh)
    return mutated, f"beat 1e12, {how}"


def mutators(kind: str, seed: str) -> tuple[Callable, ...]:
    if kind == "picture":
        return PICTURE_MUTATORS.get(seed, ())
    if kind == "claim" and seed.startswith("lease"):
        return JSON_MUTATORS + (fresh_lease, fresh_lease)
    return {
        "array": ARRAY_MUTATORS,
        "mnist_npz": ARRAY_MUTATORS,
        "idx": IDX_MUTATORS,
        "index": INDEX_MUTATORS,
        "run_config": JSON_MUTATORS,
        "history": JSON_MUTATORS,
        "claim": JSON_MUTATORS,
    }[kind]


def cases(kind: str, count: int, seed_names=None, start: int = 0, override=None) -> list[Case]:
    """`count` mutated files per seed of the kind, numbered from `start`: the same list on every machine for the
    same seeds (`override`: seed name -> (suffix, bytes), for seeds that hold a test's own paths)."""
    made = []
    for seed, (suffix, data) in sorted((override or seeds(kind)).items()):
        if seed_names is not None and seed not in seed_names:
            continue
        for number in range(start, start + count):
            rng = _rng(kind, seed, number)
            if kind == "idx" and rng.random() < 0.2:
                mutated, how = idx_gzip(rng, data)
                made.append(Case(kind, f"{seed}#{number}", suffix + ".gz", mutated, how))
                continue
            mutated, how = mutate(rng, data, mutators(kind, seed))
            made.append(Case(kind, f"{seed}#{number}", suffix, mutated, how))
    return made


def case(kind: str, name: str, override=None) -> Case:
    """The case of that name (kind "picture", name "PNG#17"): a failure's bytes, back."""
    seed, _, number = name.partition("#")
    return cases(kind, 1, {seed}, start=int(number), override=override)[0]
