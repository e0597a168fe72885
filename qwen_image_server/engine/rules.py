"""Request rules of the hosted API (spec §1.1): per model, image counts, ``n`` and ``size``; for all, ``seed``.

Torch-free: the HTTP layer applies these before anything reaches the engine.
"""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass
from typing import Literal

from qwen_image_server.errors import InvalidParameter

SizeRule = Literal["sides", "area", "fixed", "auto"]
Size = tuple[int, int]

EDIT_TARGET_PIXELS = 1024 * 1024
NEGATIVE_PROMPT_CHARS = 500  # the hosted API's bound; longer ones are cut, as there
# Prompts are cut in characters before any tokenizer sees them, at a length no real prompt within the token
# limit reaches (Qwen's tokenizer averages 1-5 characters a token); the engine then cuts at the token limit
# as the hosted API does. So a 30 MiB prompt costs nothing, and a real one loses nothing.
CHARACTERS_PER_TOKEN_BOUND = 8
FIXED_T2I_SIZES: tuple[Size, ...] = ((1664, 928), (1472, 1104), (1328, 1328), (1104, 1472), (928, 1664))
MAX_SEED = 2**31 - 1


def check_seed(seed: int | None) -> int:
    """The seed to use: the given one once in range, else a random one."""
    if seed is None:
        return secrets.randbelow(MAX_SEED + 1)
    if not 0 <= seed <= MAX_SEED:
        raise InvalidParameter(f"Parameter seed must be in [0, {MAX_SEED}].", param="seed")
    return seed


@dataclass(frozen=True)
class ModelRules:
    """What one API model name accepts. ``size_rule`` ``auto`` means the size is not customisable."""

    min_images: int
    max_images: int
    n_max: int
    size_rule: SizeRule
    text_to_image_size: Size | None
    prompt_extend: bool
    prompt_token_limit: int
    side_range: tuple[int, int] = (512, 2048)
    area_range: tuple[int, int] = (512 * 512, 2048 * 2048)
    max_aspect: float | None = None  # the longer side over the shorter, where the model bounds it
    negative_prompt: bool = True  # False: the model takes none, and one given is ignored, as hosted

    @property
    def prompt_character_limit(self) -> int:
        return self.prompt_token_limit * CHARACTERS_PER_TOKEN_BOUND

    def bound_prompt(self, prompt: str) -> str:
        return prompt[:self.prompt_character_limit]

    def check_image_count(self, count: int) -> None:
        if not self.min_images <= count <= self.max_images:
            if self.max_images == 0:
                raise InvalidParameter("This model generates from text only; remove the image items.", param="image")
            expected = (f"exactly {self.max_images}" if self.min_images == self.max_images
                        else f"{self.min_images} to {self.max_images}")
            raise InvalidParameter(f"This model accepts {expected} image(s); got {count}.", param="image")

    def check_n(self, n: int) -> None:
        if self.n_max == 1 and n != 1:
            raise InvalidParameter("num_images_per_prompt must be 1", param="n")
        if not 1 <= n <= self.n_max:
            raise InvalidParameter(f"Parameter n must be between 1 and {self.n_max}.", param="n")

    def requested_size(self, text: str | None, separator: str = "*") -> Size | None:
        """The parsed ``size``; None when absent or when this model's size is not customisable (then the
        hosted API ignores it, whatever it holds)."""
        if text is None or self.size_rule == "auto":
            return None
        return parse_size(text, separator)

    def output_size(self, requested: Size | None, last_image_size: Size | None, multiple: int,
                    separator: str = "*") -> Size:
        """The output (width, height): the requested size checked and rounded, else the model default.

        ``separator`` is how the caller's API writes sizes, for the error messages.
        """
        if requested is not None and self.size_rule != "auto":
            width, height = requested
            self._check_size(width, height, separator)
            if self.size_rule == "fixed":
                return width, height
            return round_to_multiple(width, multiple), round_to_multiple(height, multiple)
        if last_image_size is not None:
            return size_for_aspect(*last_image_size, pixels=EDIT_TARGET_PIXELS, multiple=multiple)
        if self.text_to_image_size is None:
            raise InvalidParameter("This model needs an input image.", param="image")
        return self.text_to_image_size

    def _check_size(self, width: int, height: int, separator: str) -> None:
        if self.size_rule == "fixed" and (width, height) not in FIXED_T2I_SIZES:
            allowed = ", ".join(f"{w}{separator}{h}" for w, h in FIXED_T2I_SIZES)
            raise InvalidParameter(f"Parameter size must be one of {allowed}.", param="size")
        low, high = self.side_range
        if self.size_rule == "sides" and not (low <= width <= high and low <= height <= high):
            raise InvalidParameter(f"Parameter size: width and height must each be in [{low}, {high}].",
                                   param="size")
        low, high = self.area_range
        if self.size_rule == "area" and not low <= width * height <= high:
            raise InvalidParameter(f"Parameter size: total pixels must be in [{low}, {high}] "
                                   f"(e.g. 512{separator}512 to 2048{separator}2048).", param="size")
        if self.max_aspect is not None and max(width / height, height / width) > self.max_aspect:
            raise InvalidParameter(f"Parameter size: the aspect ratio must be within 1:{self.max_aspect:g} to "
                                   f"{self.max_aspect:g}:1.", param="size")


def parse_size(text: str, separator: str = "*") -> Size:
    r"""``W*H`` as the hosted API writes sizes; OpenAI's ``WxH`` with ``separator="x"``. ASCII digits and
    spaces only: ``\d`` and ``int()`` would also take full-width and other Unicode digits."""
    match = re.fullmatch(rf" *([0-9]{{1,5}}) *{re.escape(separator)} *([0-9]{{1,5}}) *", text)
    if match is None:
        raise InvalidParameter(f"Parameter size must look like '1024{separator}1024' (width{separator}height).",
                               param="size")
    width, height = int(match.group(1)), int(match.group(2))
    if width == 0 or height == 0:
        raise InvalidParameter("Parameter size must have a positive width and height.")
    return width, height


def round_to_multiple(value: float, multiple: int) -> int:
    """Nearest multiple (ties to even, so 1033 -> 1040 and 1032 -> 1024 as the hosted API does)."""
    return max(multiple, round(value / multiple) * multiple)


def size_for_aspect(width: int, height: int, pixels: int, multiple: int) -> Size:
    """A size of about ``pixels`` in total with the aspect ratio of ``width``/``height``."""
    aspect = width / height
    target_width = math.sqrt(pixels * aspect)
    return round_to_multiple(target_width, multiple), round_to_multiple(target_width / aspect, multiple)
