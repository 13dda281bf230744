"""Datasets and dequantization (floor 3): the embedded digits; integer images in, float pixels out."""

from .dequantize import dequantize
from .digits import Splits, load_digits_images, load_embedded, split

__all__ = ["Splits", "dequantize", "load_digits_images", "load_embedded", "split"]
