"""Where an image's visual tokens lie in it: the vocabulary of ``Adapter.image_token_layout``.

An image becomes a sequence of *segments*, in token order: grids of tokens that each cover a region
of the image (a whole-image view, a crop, a tile), and tokens that lie nowhere in it (CLIP's CLS
token, LLaVA-NeXT's row-ending newlines, OneVision's trailing newline).  Regions are fractions of
the image as it was given to the processor, so a picture can be drawn over the original without
knowing how the processor resized it; they reach beyond 0..1 where the processor padded the image.
"""

from __future__ import annotations

from dataclasses import dataclass

WHOLE = (0.0, 0.0, 1.0, 1.0)


@dataclass(frozen=True)
class TokenGrid:
    """``rows x cols`` tokens in raster order, evenly covering ``box`` (left, top, right, bottom as
    fractions of the image's width and height).  ``newlines``: one token that lies nowhere ends every
    row.  ``view``: grids that tile the same picture of the image share one (a base view and its
    high-resolution crops are two)."""

    rows: int
    cols: int
    box: tuple[float, float, float, float] = WHOLE
    newlines: bool = False
    view: int = 0

    @property
    def tokens(self) -> int:
        return self.rows * (self.cols + self.newlines)


@dataclass(frozen=True)
class Unplaced:
    """``count`` tokens that lie nowhere in the image."""

    count: int = 1

    @property
    def tokens(self) -> int:
        return self.count


def token_count(segments) -> int:
    return sum(segment.tokens for segment in segments)


def token_places(segments) -> list:
    """Per token of the image, in order: ``(grid, row, col)`` with ``grid`` an index into
    ``segments``, or None for a token that lies nowhere."""
    places = []
    for index, segment in enumerate(segments):
        if isinstance(segment, Unplaced):
            places += [None] * segment.count
            continue
        for row in range(segment.rows):
            places += [(index, row, col) for col in range(segment.cols)]
            if segment.newlines:
                places.append(None)
    return places


def padded_square(height: int, width: int) -> tuple[float, float, float, float]:
    """The box of an image padded to a square around its centre (LLaVA's ``expand2square``)."""
    side = max(height, width)
    dx, dy = (side - width) / 2 / width, (side - height) / 2 / height
    return (-dx, -dy, 1 + dx, 1 + dy)


def centre_square(height: int, width: int) -> tuple[float, float, float, float]:
    """The box of the largest centred square (CLIP's shortest-edge resize, then centre crop)."""
    side = min(height, width)
    dx, dy = (width - side) / 2 / width, (height - side) / 2 / height
    return (dx, dy, 1 - dx, 1 - dy)


def covered(box, share: float) -> tuple[float, float, float, float]:
    """The top-left ``share`` of ``box`` per side: what a tower whose patches do not divide its input
    sees of it (SigLIP's 27 patches of 14 pixels cover 378 of a 384-pixel crop)."""
    left, top, right, bottom = box
    return (left, top, left + (right - left) * share, top + (bottom - top) * share)


def tiles(rows: int, cols: int, box=WHOLE) -> list[tuple[float, float, float, float]]:
    """Boxes of a ``rows x cols`` cut of ``box``, row after row."""
    left, top, right, bottom = box
    w, h = (right - left) / cols, (bottom - top) / rows
    return [(left + c * w, top + r * h, left + (c + 1) * w, top + (r + 1) * h) for r in range(rows) for c in range(cols)]
