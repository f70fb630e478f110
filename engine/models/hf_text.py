"""Hugging Face text towers (open_clip configs with `hf_model_name`: the multilingual
`xlm-roberta-base-ViT-B-32` family, mt5, nllb, roberta): where their transformers config and
tokenizer come from, on this machine only.

open_clip builds such a tower with transformers' `AutoConfig.from_pretrained(NAME)` and
`AutoTokenizer.from_pretrained(NAME)`, which would ask the Hub at load time (and retry for a while
without internet). clipbot resolves NAME to a local folder first, the Hugging Face cache under the
model cache that `clipbot models pull` fills, and hands open_clip that folder: loading never
touches the network, and missing files are a ModelUnavailable that says what to do. Only the
small files are fetched (config and tokenizer, a few MB): the CLIP checkpoint carries the weights.

The `tiny-multilingual` preset's folder is built here, offline: a tiny XLM-RoBERTa config and a
sentencepiece-style BPE tokenizer (XLM-R's kind, with its special-token ids) trained with the
`tokenizers` library on a fixed multilingual word list. No torch here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from engine.errors import ModelUnavailable
from engine.models import downloads

# The files a text tower needs besides weights: the transformers config, and whichever tokenizer
# files the repo has (a fast tokenizer.json, or a sentencepiece/BPE/WordPiece vocabulary).
TEXT_FILE_PATTERNS = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                      "added_tokens.json", "*.model", "vocab.json", "vocab.txt", "merges.txt")
_TOKENIZER_FILES = ("tokenizer.json", "sentencepiece.bpe.model", "spiece.model", "vocab.json", "vocab.txt")
TINY_XLM_R = "clipbot-preset:tiny-xlm-roberta"  # the hf_model_name that means `tiny_multilingual_source`
_TINY_CORPUS = Path(__file__).parent / "configs" / "tiny-multilingual-corpus.txt"
_TINY_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # XLM-R's ids: bos 0, pad 1, eos 2, unk 3
_TINY_VOCAB = 512
_TINY_CONFIG = {"vocab_size": _TINY_VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                "intermediate_size": 64, "max_position_embeddings": 80, "type_vocab_size": 1,
                "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}
_OFFLINE_HINT = ("without internet access, copy its config.json and tokenizer files into a folder and name that "
                 "folder as hf_model_name in a model-config JSON")
_DEFAULT_ROOT = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "clipbot"


def hf_text_name(model_config: dict) -> str:
    """The Hugging Face model an open_clip model config's text tower is built from, or ""."""
    return str(model_config.get("text_cfg", {}).get("hf_model_name") or "")


def local_source(name: str, cache_dir: str | Path | None) -> Path:
    """The local folder with `name`'s transformers config and tokenizer: `name` itself when it is
    a folder, else its snapshot in the Hugging Face cache. ModelUnavailable when not downloaded."""
    if name == TINY_XLM_R:
        return tiny_multilingual_source(cache_dir)
    if Path(name).expanduser().is_dir():
        return _checked_folder(Path(name).expanduser(), name)
    import huggingface_hub
    from huggingface_hub import errors

    missing = (f"The text tower files of {name} (its transformers config and tokenizer) are not downloaded; "
               f"run `clipbot models pull` on a machine with internet access; {_OFFLINE_HINT}")
    try:
        folder = huggingface_hub.snapshot_download(name, cache_dir=cache_dir, local_files_only=True,
                                                   allow_patterns=list(TEXT_FILE_PATTERNS))
    except errors.LocalEntryNotFoundError as exc:  # not in the cache, or only part of it
        raise ModelUnavailable(f"{missing}.") from exc
    except (OSError, ValueError) as exc:  # a name the Hub would refuse, an unreadable cache
        raise ModelUnavailable(f"{missing} ({downloads.brief(exc)}).") from exc
    return _checked_folder(Path(folder), name)


def source_here(name: str, cache_dir: str | Path | None) -> bool:
    """Whether `local_source(name)` would find its files (the tiny preset's are built on demand)."""
    if name == TINY_XLM_R:
        return True
    try:
        local_source(name, cache_dir)
    except ModelUnavailable:
        return False
    return True


def pull_source(name: str, cache_dir: str | Path | None, *, progress: bool = True) -> Path:
    """`local_source`, downloading the config and tokenizer files first where they are missing.
    Offline or unreachable: ModelUnavailable within seconds."""
    try:
        return local_source(name, cache_dir)
    except ModelUnavailable:
        pass
    import huggingface_hub

    failed = f"Could not download the text tower files of {name}"
    if downloads.hf_offline():
        raise ModelUnavailable(f"{failed}: Hugging Face offline mode is on (HF_HUB_OFFLINE); {_OFFLINE_HINT}.")
    endpoint = downloads.hf_endpoint()
    problem = downloads.check_reachable(endpoint)
    if problem:
        raise ModelUnavailable(f"{failed}: {problem}; {_OFFLINE_HINT}.")
    try:
        huggingface_hub.snapshot_download(name, cache_dir=cache_dir, allow_patterns=list(TEXT_FILE_PATTERNS),
                                          endpoint=endpoint, etag_timeout=downloads.NETWORK_TIMEOUT_S,
                                          tqdm_class=None if progress else downloads.QuietTqdm)
    except Exception as exc:  # HTTP errors, a gated or missing repo, disk full: one sentence
        raise ModelUnavailable(f"{failed}: {downloads.brief(exc)}; {_OFFLINE_HINT}.") from exc
    return local_source(name, cache_dir)


def _checked_folder(folder: Path, name: str) -> Path:
    if not (folder / "config.json").is_file():
        raise ModelUnavailable(f"The text tower folder {folder} of {name} has no config.json; pull it again.")
    if not any((folder / file).is_file() for file in _TOKENIZER_FILES):
        raise ModelUnavailable(f"The text tower folder {folder} of {name} has no tokenizer "
                               f"(one of {', '.join(_TOKENIZER_FILES)}); pull it again.")
    return folder


def source_digest(folder: Path) -> str:
    """SHA-256 over the folder's config and tokenizer files: a changed tokenizer is a new model
    for caches keyed by model (label embeddings, query embeddings)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        digest.update(f"{path.name}|".encode())
        digest.update(downloads.sha256_file(path).encode())
    return digest.hexdigest()


# --- the tiny-multilingual preset ---------------------------------------------------------------


def tiny_multilingual_source(cache_dir: str | Path | None) -> Path:
    """The folder of the `tiny-multilingual` preset's text tower (config.json, tokenizer.json),
    built offline on first use under `<cache_dir>/presets/` (default ~/.cache/clipbot/presets).

    Its name carries a digest of everything that shapes it (word list, config, library versions):
    a change builds a new folder. Built in a temporary folder and moved into place, so concurrent
    workers never see half a tokenizer."""
    import tokenizers
    import transformers

    corpus = _TINY_CORPUS.read_text(encoding="utf-8")
    inputs = json.dumps([corpus, _TINY_CONFIG, _TINY_SPECIALS, tokenizers.__version__, transformers.__version__])
    root = (Path(cache_dir).expanduser() if cache_dir else _DEFAULT_ROOT) / "presets"
    folder = root / f"tiny-xlm-roberta-{hashlib.sha256(inputs.encode()).hexdigest()[:16]}"
    if (folder / "tokenizer.json").is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=root))
    try:
        _write_tiny_text_tower(corpus.splitlines(), work)
        try:
            os.replace(work, folder)
        except OSError:  # another process finished first
            pass
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder


def _write_tiny_text_tower(lines: list[str], folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig

    # BPE, not Unigram: the tokenizers library trains BPE deterministically; its Unigram trainer
    # gives slightly different scores and piece order from run to run (other token ids elsewhere).
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()  # sentencepiece's "▁word" pieces
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=_TINY_VOCAB, special_tokens=list(_TINY_SPECIALS), show_progress=False)
    tokenizer.train_from_iterator(lines, trainer)
    bos, eos = _TINY_SPECIALS[0], _TINY_SPECIALS[2]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, tokenizer.token_to_id(bos)), (eos, tokenizer.token_to_id(eos))])
    assert tokenizer.get_vocab_size() <= _TINY_VOCAB
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=bos, eos_token=eos, cls_token=bos, sep_token=eos,
        pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
        model_max_length=_TINY_CONFIG["max_position_embeddings"],
    ).save_pretrained(folder)
    XLMRobertaConfig(**_TINY_CONFIG).save_pretrained(folder)
