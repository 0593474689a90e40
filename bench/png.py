"""A tiny PNG writer and line chart, in pure Python (zlib + struct): no plotting dependency.

``line_chart(path, series, ...)`` draws one line per series (points with min–max whiskers) on
linear axes, with tick labels and a legend in a 5x7 bitmap font (upper case, digits and a few
signs), and writes an RGB PNG.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

Color = tuple[int, int, int]
WHITE: Color = (255, 255, 255)
BLACK: Color = (0, 0, 0)
GREY: Color = (200, 200, 200)
PALETTE: tuple[Color, ...] = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189))

# 5x7 glyphs, one string of 7 rows per character, "#" = ink
_GLYPHS = {
    "0": ".###.#...##..###.#.###..##...#.###.", "1": "..#...##....#....#....#....#...###.",
    "2": ".###.#...#....#...#...#...#...#####", "3": "#####...#...#.....#.....##...#.###.",
    "4": "...#...##..#.#.#..#.#####...#....#.", "5": "######....####.....#....##...#.###.",
    "6": "..##..#...#....####.#...##...#.###.", "7": "#####....#...#...#...#....#....#...",
    "8": ".###.#...##...#.###.#...##...#.###.", "9": ".###.#...##...#.####....#...#..##..",
    "A": ".###.#...##...#######...##...##...#", "B": "####.#...##...#####.#...##...#####.",
    "C": ".###.#...##....#....#....#...#.###.", "D": "###..#..#.#...##...##...##..#.###..",
    "E": "######....#....####.#....#....#####", "F": "######....#....####.#....#....#....",
    "G": ".###.#...##....#.####...##...#.####", "H": "#...##...##...#######...##...##...#",
    "I": ".###...#....#....#....#....#...###.", "J": "..###...#....#....#....#.#..#..##..",
    "K": "#...##..#.#.#..##...#.#..#..#.#...#", "L": "#....#....#....#....#....#....#####",
    "M": "#...###.###.#.##.#.##...##...##...#", "N": "#...##...###..##.#.##..###...##...#",
    "O": ".###.#...##...##...##...##...#.###.", "P": "####.#...##...#####.#....#....#....",
    "Q": ".###.#...##...##...##.#.##..#..##.#", "R": "####.#...##...#####.#.#..#..#.#...#",
    "S": ".#####....#.....###.....#....#####.", "T": "#####..#....#....#....#....#....#..",
    "U": "#...##...##...##...##...##...#.###.", "V": "#...##...##...##...##...#.#.#...#..",
    "W": "#...##...##...##.#.##.#.##.#.#.#.#.", "X": "#...##...#.#.#...#...#.#.#...##...#",
    "Y": "#...##...#.#.#...#....#....#....#..", "Z": "#####....#...#...#...#...#....#####",
    ".": "..............................##...", "-": "...............#####...............",
    "/": ".........#...#...#...#...#.........", "(": "...#...#...#....#....#.....#.....#.",
    ")": ".#.....#.....#....#....#...#...#...", ":": ".......##....##.......##....##.....",
    "=": "..........#####.....#####..........", "%": "##...##..#...#...#...#...#..##...##",
    ",": "......................##....#...#..", " ": "",
}  # fmt: skip


def _glyph(char: str) -> list[str]:
    pattern = _GLYPHS.get(char, "") or "." * 35
    pattern = (pattern + "." * 35)[:35]
    return [pattern[row * 5 : row * 5 + 5] for row in range(7)]


def encode_png(width: int, height: int, rgb: bytes | bytearray) -> bytes:
    """An 8-bit RGB PNG of ``width`` x ``height`` from row-major RGB bytes."""
    if len(rgb) != width * height * 3:
        raise ValueError(f"expected {width * height * 3} bytes of RGB, got {len(rgb)}")
    stride = width * 3
    raw = b"".join(b"\x00" + bytes(rgb[y * stride : (y + 1) * stride]) for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


class Canvas:
    """An RGB raster with the few drawing primitives a line chart needs."""

    def __init__(self, width: int, height: int, background: Color = WHITE) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(background) * (width * height))

    def set(self, x: int, y: int, color: Color) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            i = (y * self.width + x) * 3
            self.pixels[i : i + 3] = bytes(color)

    def get(self, x: int, y: int) -> Color:
        i = (y * self.width + x) * 3
        return self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        for y in range(min(y0, y1), max(y0, y1) + 1):
            for x in range(min(x0, x1), max(x0, x1) + 1):
                self.set(x, y, color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color: Color, width: int = 1) -> None:
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        half = width // 2
        while True:
            self.rect(x0 - half, y0 - half, x0 - half + width - 1, y0 - half + width - 1, color)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def text(self, x: int, y: int, text: str, color: Color = BLACK, scale: int = 1) -> int:
        """Draw ``text`` (upper-cased) with its top-left at (x, y); returns its width."""
        cursor = x
        for char in text.upper():
            for row, bits in enumerate(_glyph(char)):
                for col, bit in enumerate(bits):
                    if bit == "#":
                        self.rect(
                            cursor + col * scale,
                            y + row * scale,
                            cursor + col * scale + scale - 1,
                            y + row * scale + scale - 1,
                            color,
                        )
            cursor += 6 * scale
        return cursor - x

    def png(self) -> bytes:
        return encode_png(self.width, self.height, self.pixels)


def text_width(text: str, scale: int = 1) -> int:
    return len(text) * 6 * scale


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering ``low``..``high`` (steps of 1, 2 or 5 x 10^k)."""
    if high <= low:
        high = low + 1
    raw = (high - low) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 10))
    return ticks


def _label(value: float) -> str:
    return f"{value:g}"


@dataclass
class Series:
    """One line: ``points`` are (x, median, min, max)."""

    name: str
    points: Sequence[tuple[float, float, float, float]]


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    width: int = 720,
    height: int = 480,
) -> bytes:
    """A PNG line chart of ``series`` (medians joined, min–max whiskers)."""
    canvas = Canvas(width, height)
    left, right, top, bottom = 70, 30, 50, 60
    xs = [p[0] for s in series for p in s.points] or [0.0, 1.0]
    ys = [v for s in series for p in s.points for v in p[1:]] or [0.0, 1.0]
    x_ticks = sorted(set(xs))
    y_ticks = nice_ticks(0.0, max(ys))
    x_low, x_high = min(x_ticks), max(x_ticks)
    if x_high == x_low:
        x_high = x_low + 1
    y_high = y_ticks[-1]

    def px(x: float) -> int:
        return round(left + (x - x_low) / (x_high - x_low) * (width - left - right))

    def py(y: float) -> int:
        return round(height - bottom - y / y_high * (height - top - bottom))

    canvas.text((width - text_width(title, 2)) // 2, 12, title, scale=2)
    for tick in y_ticks:
        canvas.line(left, py(tick), width - right, py(tick), GREY)
        label = _label(tick)
        canvas.text(left - 8 - text_width(label), py(tick) - 3, label)
    for tick in x_ticks:
        canvas.line(px(tick), height - bottom, px(tick), height - bottom + 4, BLACK)
        label = _label(tick)
        canvas.text(px(tick) - text_width(label) // 2, height - bottom + 8, label)
    canvas.line(left, top, left, height - bottom, BLACK)
    canvas.line(left, height - bottom, width - right, height - bottom, BLACK)
    canvas.text((width - text_width(x_label)) // 2, height - 22, x_label)
    canvas.text(8, top - 18, y_label)
    for index, one in enumerate(series):
        color = PALETTE[index % len(PALETTE)]
        points = sorted(one.points)
        for (x0, m0, _, _), (x1, m1, _, _) in zip(points, points[1:], strict=False):
            canvas.line(px(x0), py(m0), px(x1), py(m1), color, width=2)
        for x, median, low, high in points:
            canvas.line(px(x), py(low), px(x), py(high), color)
            canvas.line(px(x) - 4, py(low), px(x) + 4, py(low), color)
            canvas.line(px(x) - 4, py(high), px(x) + 4, py(high), color)
            canvas.rect(px(x) - 3, py(median) - 3, px(x) + 3, py(median) + 3, color)
        legend_y = top + 6 + index * 14
        canvas.rect(left + 12, legend_y, left + 24, legend_y + 6, color)
        canvas.text(left + 30, legend_y, one.name)
    return canvas.png()


def write_chart(path: Path, series: Sequence[Series], **kwargs: object) -> Path:
    path.write_bytes(line_chart(series, **kwargs))  # type: ignore[arg-type]
    return path
