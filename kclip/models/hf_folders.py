"""Hugging Face folders that KerasHub's converters do not read as they are.

KerasHub's DistilBERT converter looks weights up as `distilbert.embeddings...`, the names a
`DistilBertForMaskedLM` checkpoint (the Hub's distilbert-base-uncased) uses. A bare
`DistilBertModel.save_pretrained(...)` (what clip-lightning's `AutoModel` text encoder
saves) stores `embeddings...` and fails to load. Such a folder is mirrored once into a cache
folder with the prefix added; every other file is linked, not copied.
"""

import hashlib
import json
import os
from pathlib import Path

# model_type -> the prefix KerasHub's converter expects in front of every weight name.
EXPECTED_PREFIX = {"distilbert": "distilbert."}
CACHE_ENV = "KCLIP_CACHE_DIR"


def _cache_root():
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "kclip") / "hf_folders"


def adapt_hf_folder(folder):
    """`folder`, or a cached mirror of it whose weight names KerasHub's converter finds."""
    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return str(folder)
    prefix = EXPECTED_PREFIX.get(config.get("model_type"))
    weights = folder / "model.safetensors"
    if prefix is None or not weights.is_file():
        return str(folder)
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(weights), framework="np") as handle:
        keys = list(handle.keys())
        if not keys or all(key.startswith(prefix) for key in keys):
            return str(folder)
        stat = weights.stat()
        tag = hashlib.sha256(f"{weights.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
        mirror = _cache_root() / tag
        if (mirror / "model.safetensors").is_file():
            return str(mirror)
        building = mirror.with_name(f"{tag}.partial-{os.getpid()}")
        building.mkdir(parents=True, exist_ok=True)
        tensors = {(key if key.startswith(prefix) else prefix + key): handle.get_tensor(key) for key in keys}
    save_file(tensors, str(building / "model.safetensors"))
    for path in folder.iterdir():
        if path.name != "model.safetensors" and not (building / path.name).exists():
            os.symlink(path.resolve(), building / path.name)
    if mirror.exists():  # another process finished first
        import shutil

        shutil.rmtree(building)
    else:
        os.replace(building, mirror)
    return str(mirror)


# WordPiece models whose KerasHub tokenizer takes `strip_accents`.
_WORDPIECE_MODEL_TYPES = ("bert", "distilbert")


def hf_tokenizer_kwargs(folder):
    """Arguments that make KerasHub's tokenizer for a Hugging Face folder split text as transformers does.

    KerasHub's converters pass only `lowercase`; transformers' BERT tokenizers also strip
    accents whenever they lower-case (unless `strip_accents` says otherwise), so
    without this "café" finds no token in an uncased vocabulary.
    """
    folder = Path(folder)
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
        tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return {}
    if model_type not in _WORDPIECE_MODEL_TYPES:
        return {}
    strip_accents = tokenizer_config.get("strip_accents")
    if strip_accents is None:
        strip_accents = bool(tokenizer_config.get("do_lower_case", True))
    return {"strip_accents": bool(strip_accents)}
