"""Tiny in-code models for tests and the ``tiny`` profile (no download, seconds to build).

``tiny:causal-lm`` (Qwen2, chat template), ``tiny:encoder`` (BERT + mean pooling as a SentenceTransformer) and
``tiny:nli`` (3-label BERT classifier) share a byte-level BPE tokenizer trained in-process. Random weights, fixed
seeds: they prove the wiring, never a number worth reporting.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_MODELS = ("tiny:causal-lm", "tiny:encoder", "tiny:nli")
_VERSION = "2"  # bump to rebuild cached tiny models after a change here


def _corpus() -> list[str]:
    from .text import stopwords

    words = (
        sorted(stopwords())
        + (
            "perspective perspectives core summary value values right rights duty duties autonomy freedom justice care "
            "harm fairness honesty loyalty respect tradition safety wellbeing community family responsibility compassion "
            "provide structured comprehensive analysis opinions topic situation people someone person individual society "
            "may might could should would important moral ethical choice decision help others life health friends"
        ).split()
    )
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    lines += [
        f"In the perspective of {w.capitalize()}, people may value {w} and {v}." for w, v in zip(words, words[7:])
    ]
    lines += ["<core perspectives>", "</core perspectives>", "<summary>", "</summary>"]
    return lines * 4


def build_tokenizer(out_dir: Path, vocab_size: int = 800):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_corpus(), trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )
    hf.chat_template = CHAT_TEMPLATE
    hf.padding_side = "left"
    hf.save_pretrained(out_dir)
    return hf


def build_causal_lm(out_dir: Path, seed: int = 0) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = build_tokenizer(out_dir)
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    model.config.architectures = ["Qwen2ForCausalLM"]
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir)
    return out_dir


def _bert_config(vocab_size: int, pad_id: int, **kw):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        pad_token_id=pad_id,
        **kw,
    )


def build_encoder(out_dir: Path, seed: int = 0) -> Path:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Pooling, Transformer
    from transformers import BertModel

    tmp = out_dir / "_hf"
    tok = build_tokenizer(tmp)
    tok.padding_side = "right"
    tok.save_pretrained(tmp)
    torch.manual_seed(seed)
    BertModel(_bert_config(len(tok), tok.pad_token_id)).save_pretrained(tmp)
    word = Transformer(str(tmp), max_seq_length=128)
    model = SentenceTransformer(modules=[word, Pooling(word.get_word_embedding_dimension(), "mean")], device="cpu")
    model.save(str(out_dir))
    shutil.rmtree(tmp)
    return out_dir


def build_nli(out_dir: Path, seed: int = 0) -> Path:
    import torch
    from transformers import BertForSequenceClassification

    tok = build_tokenizer(out_dir)
    tok.padding_side = "right"
    tok.save_pretrained(out_dir)
    labels = {0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}
    cfg = _bert_config(
        len(tok), tok.pad_token_id, num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()}
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(cfg)
    model.config.architectures = ["BertForSequenceClassification"]
    model.save_pretrained(out_dir)
    return out_dir


BUILDERS = {"tiny:causal-lm": build_causal_lm, "tiny:encoder": build_encoder, "tiny:nli": build_nli}


def materialize(name: str, root: Path | None = None) -> Path:
    """Build (once, cached by name and version) and return the folder of an in-code tiny model."""
    if name not in BUILDERS:
        raise KeyError(f"unknown tiny model {name!r}; known: {sorted(BUILDERS)}")
    from .paths import models_dir

    root = Path(root) if root else models_dir() / "tiny"
    dest = root / name.split(":", 1)[1]
    marker = dest / ".opgrpo_tiny"
    if marker.exists() and marker.read_text() == _VERSION:
        from .model_files import ModelUnavailable, verify_folder

        try:
            verify_folder(dest, name)  # built in code: a changed file is rebuilt, not used
            return dest
        except ModelUnavailable as exc:
            print(f"[models] {exc.args[0].split(';')[0]}: rebuilding {name}")
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{dest.name}."))
    try:
        BUILDERS[name](staging)
        from .model_files import write_manifest

        write_manifest(staging)
        (staging / ".opgrpo_tiny").write_text(_VERSION)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest
