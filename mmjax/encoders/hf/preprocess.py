"""Raw inputs -> what a converted tower consumes, from the model directory's own files.

* :class:`ImagePreprocess` reads ``preprocessor_config.json`` (the
  ``image_processor`` part of a processor): resize (to ``size`` height/width or
  ``shortest_edge``, with its PIL filter), centre crop, rescale and normalise
  with the checkpoint's ``image_mean`` / ``image_std`` (JAX), channels last.
  The resize is PIL's own, as the reference processor's: ``jax.image.resize``
  with the same cubic kernel differs by up to ~8 uint8 levels on
  high-frequency images (PIL rounds to uint8 between its two passes).
* :class:`VideoPreprocess` applies those steps to every frame of a clip.
* :class:`TextPreprocess` tokenises with ``tokenizers`` from ``tokenizer.json``
  (the special tokens its post-processor adds), truncates and pads to a fixed
  length with the pad token of ``tokenizer_config.json``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.encoders.hf.weights import HFCheckpointError, import_optional, read_json

# PIL resample codes that preprocessor_config.json stores: nearest, lanczos, bilinear, bicubic, box, hamming.
RESAMPLE = (0, 1, 2, 3, 4, 5)


def _hw(size: Mapping[str, int], image_hw: Tuple[int, int]) -> Tuple[int, int]:
    """Output (height, width) of the processor's resize: fixed height/width, or the short side = shortest_edge."""
    if "height" in size:
        return int(size["height"]), int(size["width"])
    h, w = image_hw
    short = int(size["shortest_edge"])
    if w <= h:
        return int(short * h / w), short
    return short, int(short * w / h)


class ImagePreprocess:
    """uint8 image(s) (H, W, C) or (B, H, W, C) or a list of differently sized (H, W, C) ->
    pixel_values (B, h, w, C) float32, as the checkpoint's image processor prepares them."""

    def __init__(self, config: Mapping[str, Any]):
        self.config = dict(config)
        self.resample = int(self.config.get("resample", 2))
        if self.resample not in RESAMPLE:
            raise HFCheckpointError(f"image preprocessing: resample={self.resample} is not a PIL filter code")

    @classmethod
    def from_dir(cls, model_dir: str) -> "ImagePreprocess":
        cfg = read_json(model_dir, "preprocessor_config.json")
        if not cfg:
            raise HFCheckpointError(f"{model_dir}: no preprocessor_config.json (the image processor's settings)")
        return cls(cfg.get("image_processor", cfg))

    def one(self, image: np.ndarray) -> jax.Array:
        """One (H, W, C) uint8 image -> (h, w, C) float32."""
        c = self.config
        image = np.asarray(image)
        if image.ndim == 2:
            image = image[..., None]
        if c.get("do_convert_rgb") and image.shape[-1] == 1:
            image = np.repeat(image, 3, axis=-1)
        if c.get("do_resize", True):
            from PIL import Image

            h, w = _hw(c["size"], image.shape[:2])
            pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8).squeeze(-1) if image.shape[-1] == 1
                                  else np.clip(image, 0, 255).astype(np.uint8))
            image = np.asarray(pil.resize((w, h), resample=self.resample)).reshape(h, w, -1)
        x = jnp.asarray(image, jnp.float32)
        if c.get("do_center_crop"):
            crop = c.get("crop_size") or {}
            ch, cw = int(crop.get("height", 224)), int(crop.get("width", 224))
            top, left = (x.shape[0] - ch) // 2, (x.shape[1] - cw) // 2
            if top < 0 or left < 0:
                raise HFCheckpointError(f"image preprocessing: image {x.shape[:2]} is smaller than the crop "
                                        f"{(ch, cw)}")
            x = x[top:top + ch, left:left + cw]
        if c.get("do_rescale", True):
            x = x * float(c.get("rescale_factor", 1 / 255))
        if c.get("do_normalize", True):
            x = (x - jnp.asarray(c["image_mean"], jnp.float32)) / jnp.asarray(c["image_std"], jnp.float32)
        return x

    def __call__(self, images: Union[np.ndarray, Sequence[np.ndarray]]) -> jax.Array:
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        return jnp.stack([self.one(np.asarray(im)) for im in images])

    @property
    def mean_std(self) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
        """(mean, std) per channel in [0, 1] units: what a data config's image modality should use."""
        return tuple(self.config["image_mean"]), tuple(self.config["image_std"])


class VideoPreprocess:
    """uint8 clip(s) (F, H, W, C) or (B, F, H, W, C) -> (B, F, h, w, C) float32: every frame as
    :class:`ImagePreprocess` prepares an image (the VideoMAE image processor's per-frame steps)."""

    def __init__(self, config: Mapping[str, Any]):
        self.image = ImagePreprocess(config)

    @classmethod
    def from_dir(cls, model_dir: str) -> "VideoPreprocess":
        return cls(ImagePreprocess.from_dir(model_dir).config)

    def __call__(self, videos: Union[np.ndarray, Sequence[np.ndarray]]) -> jax.Array:
        if isinstance(videos, np.ndarray) and videos.ndim == 4:
            videos = [videos]
        clips = [np.asarray(v) for v in videos]
        if any(c.ndim != 4 for c in clips):
            raise HFCheckpointError(f"video preprocessing: clips must be (F, H, W, C) uint8 frames, got shapes "
                                    f"{[c.shape for c in clips]}")
        return jnp.stack([self.image(list(c)) for c in clips])


class TextPreprocess:
    """strings -> (input_ids (B, L) int32, attention mask (B, L) bool), L = max_len, from tokenizer.json."""

    def __init__(self, model_dir: str, max_len: int, pad_id: Optional[int] = None, mask_padding: bool = True):
        path = Path(model_dir) / "tokenizer.json"
        if not path.is_file():
            raise HFCheckpointError(f"{model_dir}: no tokenizer.json (a fast tokenizer's file)")
        tokenizers = import_optional("tokenizers", "text preprocessing")
        self.tokenizer = tokenizers.Tokenizer.from_file(str(path))
        self.max_len = int(max_len)
        if pad_id is None:
            pad_id = _pad_id(model_dir, self.tokenizer)
        self.pad_id = pad_id
        # False: the mask is all True, as for SigLIP, whose processor gives no attention mask
        self.mask_padding = mask_padding
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_len)

    def __call__(self, texts: Union[str, Sequence[str]]) -> Tuple[np.ndarray, np.ndarray]:
        return self.encode(texts)[:2]

    def encode(self, texts: Union[str, Sequence[str]]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """strings -> (ids (B, L) int32, mask (B, L) bool, lengths (B,) int32: the tokens before padding,
        special tokens included). Safe from several threads: the tokenizer is only read after
        ``__init__`` (``encode_batch`` releases the GIL, the padding and truncation set here stay)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = np.full((len(texts), self.max_len), self.pad_id, np.int32)
        mask = np.full((len(texts), self.max_len), not self.mask_padding)
        lengths = np.zeros((len(texts),), np.int32)
        for i, enc in enumerate(self.tokenizer.encode_batch(texts)):
            ids[i, :len(enc.ids)] = enc.ids
            mask[i, :len(enc.ids)] = True
            lengths[i] = len(enc.ids)
        return ids, mask, lengths


def _pad_id(model_dir: str, tokenizer: Any) -> int:
    """The pad token's id: tokenizer_config.json's pad_token, else config.json's pad_token_id, else 0."""
    token = read_json(model_dir, "tokenizer_config.json").get("pad_token")
    if isinstance(token, dict):
        token = token.get("content")
    if isinstance(token, str) and tokenizer.token_to_id(token) is not None:
        return int(tokenizer.token_to_id(token))
    cfg: Dict[str, Any] = read_json(model_dir, "config.json")
    cfg = cfg.get("text_config") or cfg
    return int(cfg.get("pad_token_id") or 0)
