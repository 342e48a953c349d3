"""Comparison grids: images in rows and columns with labels, as one picture.

    sheet = compose_grid([[a0, a1], [b0, b1]], ["strength 0", "strength 1"], ["a cat", "a dog"], "seed 7")
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

MAX_GRID_CELLS = 64
"""Most images one grid may generate (LoRAs x prompts x strengths): each is a full sampling run."""
PAD = 4
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)


def check_grid_size(loras: int, prompts: int, strengths: int, limit: int = MAX_GRID_CELLS) -> None:
    """Refuse an empty grid or one of more than `limit` cells before any image is generated."""
    from trainer.errors import StudioError

    cells = loras * prompts * strengths
    if not prompts or not strengths:
        raise StudioError("a grid needs at least one prompt and one strength", fix="Give a prompt and a strength.")
    if cells > limit:
        raise StudioError(
            f"a grid of {loras} LoRA(s) x {prompts} prompt(s) x {strengths} strength(s) is {cells} images, "
            f"more than the limit of {limit}",
            fix="Use fewer prompts or strengths, or make several grids.",
        )


@dataclass
class _Layout:
    cell_w: int
    cell_h: int
    label_w: int
    head_h: int
    line_h: int
    font: object

    def cell(self, row: int, col: int) -> tuple[int, int, int, int]:
        left = self.label_w + col * (self.cell_w + PAD) + PAD
        top = self.head_h + row * (self.cell_h + PAD)
        return left, top, left + self.cell_w, top + self.cell_h


def _layout(rows: list[list[Image.Image]], row_labels: list[str], title: str) -> _Layout:
    if not rows or not rows[0]:
        raise ValueError("a grid needs at least one image")
    cell_w, cell_h = rows[0][0].size
    font = _font(max(10, cell_h // 10))
    line_h = _text_size(font, "Ag")[1] + PAD
    label_w = min(max(_text_size(font, text)[0] for text in [*row_labels, title]) + 2 * PAD, 3 * cell_w)
    return _Layout(cell_w, cell_h, label_w, line_h * (2 if title else 1) + PAD, line_h, font)


def compose_grid(rows: list[list[Image.Image]], col_labels: list[str], row_labels: list[str],
                 title: str = "") -> Image.Image:
    """Lay `rows` of equal-sized images on a white sheet, column labels on top and row labels on the left."""
    at = _layout(rows, row_labels, title)
    ncols = max(len(row) for row in rows)
    right, bottom = at.cell(len(rows) - 1, ncols - 1)[2:]
    sheet = Image.new("RGB", (right + PAD, bottom + PAD), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if title:  # never wider than the sheet
        draw.text((PAD, PAD), _fit(draw, at.font, title, sheet.width - 2 * PAD), fill=INK, font=at.font)
    for col, text in enumerate(col_labels):
        draw.text((at.cell(0, col)[0], at.head_h - at.line_h), _fit(draw, at.font, text, at.cell_w),
                  fill=INK, font=at.font)
    for r, (row, text) in enumerate(zip(rows, row_labels, strict=True)):
        top = at.cell(r, 0)[1]
        lines = _wrap(draw, at.font, text, at.label_w - 2 * PAD, max(1, at.cell_h // at.line_h))
        first = top + at.cell_h // 2 - len(lines) * at.line_h // 2
        for i, line in enumerate(lines):  # a long prompt wraps over the row's height instead of being cut
            draw.text((PAD, first + i * at.line_h), line, fill=INK, font=at.font)
        for col, image in enumerate(row):
            sheet.paste(image.convert("RGB"), at.cell(r, col)[:2])
    return sheet


def cell_box(rows: list[list[Image.Image]], row_labels: list[str], row: int, col: int,
             title: str = "") -> tuple[int, int, int, int]:
    """Where cell (row, col) lies in the sheet compose_grid makes from the same arguments (to crop it)."""
    return _layout(rows, row_labels, title).cell(row, col)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _text_size(font, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text or " ")
    return int(right - left), int(bottom - top)


def _fit(draw: ImageDraw.ImageDraw, font, text: str, width: int) -> str:
    """Shorten `text` with an ellipsis until it fits `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _wrap(draw: ImageDraw.ImageDraw, font, text: str, width: int, max_lines: int) -> list[str]:
    """`text` in lines of at most `width` pixels, broken at spaces; the last line is shortened if needed."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [" ".join(lines[max_lines - 1:])]
    return [_fit(draw, font, line, width) for line in lines] or [""]
