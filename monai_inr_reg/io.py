"""Read an image file into a channel-first MetaTensor (RAS affine), as MONAI's ``LoadImage`` does."""

from __future__ import annotations

from pathlib import Path

__all__ = ["load_image"]


def load_image(path, *, name: str = "image"):
    """Load ``path`` (NIfTI, MHA/MHD, NRRD, PNG, ...) as a ``(C, *S)`` MetaTensor with a RAS affine.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be read as an image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_image(): '{name}' file {str(path)!r} does not exist")
    from monai.transforms import LoadImage  # lazy: keeps `import monai_inr_reg` light

    try:
        return LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    except Exception as err:  # MONAI raises several types for unreadable files
        raise ValueError(f"load_image(): '{name}' file {str(path)!r} could not be read as an image: {err}") from None
