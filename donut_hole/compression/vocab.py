"""Vocabulary pruning: keep only the output tokens a domain uses.

donut-base's decoder reads and writes a 57,525-piece multilingual vocabulary. Its tied embedding /
``lm_head`` matrix (57,525 × 1,024 = 59M weights) is the largest single tensor of the model, and at batch 1
generation is bound by reading the decoder's weights once per token: the ``lm_head`` alone is about half
of the bytes read. Logistics documents use a small fraction of those pieces, so the student keeps only

* every special token (field tags, the task token, ``<s>``, ``</s>``, padding, unknown),
* the tokens that the tokenised training targets use,
* the single characters of the corpus (so unseen words can still be spelled), and
* for BPE, the merge ancestors of every kept token (so tokenisation is unchanged).

For the kept ids the pruned model computes exactly the logits the full model did: greedy decoding changes
only where the full model would have emitted a token the domain never uses. The tokenizer is rebuilt with
renumbered ids, and :func:`prune_vocabulary` checks that it tokenises the corpus exactly as the old one did
(mapped to the new ids) before it changes the model.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

Donut = Any  # a VisionEncoderDecoderModel with an mBART decoder


class VocabularyError(ValueError):
    """The tokenizer cannot be pruned (unknown model type) or pruning would change tokenisation."""


@dataclass(frozen=True)
class VocabularyPruning:
    """What :func:`prune_vocabulary` did: ``kept[new_id] == old_id``."""

    kept: list[int]
    before: int

    @property
    def after(self) -> int:
        return len(self.kept)

    @property
    def removed(self) -> int:
        return self.before - self.after

    def summary(self) -> dict[str, int]:
        return {"vocab_before": self.before, "vocab_after": self.after, "vocab_removed": self.removed}

    def token_map(self, unk_id: int) -> torch.Tensor:
        """(before,) old id → new id; removed tokens map to ``unk_id`` (a new id)."""
        table = torch.full((self.before,), unk_id, dtype=torch.long)
        table[torch.as_tensor(self.kept)] = torch.arange(self.after)
        return table


def _merge_pair(merge: Any) -> tuple[str, str]:
    if isinstance(merge, str):  # older tokenizer.json: "a b"
        left, _, right = merge.partition(" ")
        return left, right
    return merge[0], merge[1]


def _encode(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []


def tokens_to_keep(
    tokenizer: Any, corpus: Iterable[str], *, encoded: list[list[int]] | None = None
) -> list[int]:
    """Old ids to keep for ``corpus``: specials, used tokens, single characters and BPE ancestors.

    ``encoded`` is ``corpus`` already tokenised (by the caller, who needs the ids too)."""
    texts = list(corpus)
    keep: set[int] = set(tokenizer.all_special_ids)
    keep.update(int(i) for i in tokenizer.added_tokens_decoder)
    for ids in encoded if encoded is not None else _encode(tokenizer, texts):
        keep.update(ids)
    chars = sorted(set("".join(texts)) - {" "})
    for ids in _encode(tokenizer, chars):
        keep.update(ids)
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    model = state["model"]
    if model["type"] == "BPE":
        vocab: dict[str, int] = model["vocab"]
        prefix = model.get("continuing_subword_prefix") or ""
        parents: dict[str, tuple[str, str]] = {}
        for merge in model["merges"]:
            left, right = _merge_pair(merge)
            parents.setdefault(left + right.removeprefix(prefix), (left, right))
        names = {i: t for t, i in vocab.items()}
        todo = [names[i] for i in keep if i in names]
        while todo:
            pair = parents.get(todo.pop())
            for part in pair or ():
                if part in vocab and vocab[part] not in keep:
                    keep.add(vocab[part])
                    todo.append(part)
    unk = tokenizer.unk_token_id
    if unk is not None:
        keep.add(unk)
    return sorted(keep)


def _remap_post_processor(node: Any, new_id: dict[int, int]) -> Any:
    """Renumber the ids a post-processor stores (TemplateProcessing, Roberta/BertProcessing, Sequence)."""
    if node is None:
        return None
    kind = node.get("type")
    if kind == "Sequence":
        node["processors"] = [_remap_post_processor(p, new_id) for p in node["processors"]]
    elif kind == "TemplateProcessing":
        for special in node.get("special_tokens", {}).values():
            special["ids"] = [new_id[i] for i in special["ids"]]
    elif kind in ("RobertaProcessing", "BertProcessing"):
        for key in ("sep", "cls"):
            token, old = node[key]
            node[key] = [token, new_id[old]]
    return node


def prune_tokenizer(tokenizer: Any, kept: Sequence[int]) -> Any:
    """A new fast tokenizer holding only ``kept`` (old ids, ascending); new id = position in ``kept``."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    new_id = {old: new for new, old in enumerate(kept)}
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    model = state["model"]
    kind = model["type"]
    if kind in ("BPE", "WordLevel", "WordPiece"):
        model["vocab"] = {t: new_id[i] for t, i in model["vocab"].items() if i in new_id}
        if kind == "BPE":
            prefix = model.get("continuing_subword_prefix") or ""
            vocab = model["vocab"]
            merges = []
            for merge in model["merges"]:
                left, right = _merge_pair(merge)
                if left in vocab and right in vocab and left + right.removeprefix(prefix) in vocab:
                    merges.append(merge)
            model["merges"] = merges
    elif kind == "Unigram":
        pieces = model["vocab"]
        model["vocab"] = [pieces[i] for i in kept if i < len(pieces)]
        if model.get("unk_id") is not None:
            model["unk_id"] = new_id[model["unk_id"]]
    else:
        raise VocabularyError(f"cannot prune a {kind} tokenizer (BPE, Unigram, WordLevel and WordPiece can)")
    state["added_tokens"] = [
        {**added, "id": new_id[added["id"]]} for added in state["added_tokens"] if added["id"] in new_id
    ]
    state["post_processor"] = _remap_post_processor(state.get("post_processor"), new_id)
    backend = Tokenizer.from_str(json.dumps(state))
    specials = {
        name: getattr(tokenizer, name)
        for name in ("pad_token", "bos_token", "eos_token", "unk_token", "sep_token", "cls_token")
        if getattr(tokenizer, name, None) is not None
    }
    pruned = PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=tokenizer.model_max_length, **specials
    )
    extra = [t for t in tokenizer.all_special_tokens if t not in set(specials.values())]
    if extra:
        pruned.add_special_tokens({"additional_special_tokens": extra})
    return pruned


def _check_same_tokenisation(
    old: Any, new: Any, kept: Sequence[int], corpus: Sequence[str], encoded: list[list[int]]
) -> None:
    """``new`` splits every text of ``corpus`` as ``old`` did (``encoded``), in the renumbered ids."""
    new_id = {o: n for n, o in enumerate(kept)}
    for text, before, after in zip(corpus, encoded, _encode(new, corpus), strict=True):
        if after != [new_id.get(i, -1) for i in before]:
            raise VocabularyError(
                f"the pruned tokenizer splits {text[:60]!r} differently "
                f"({len(before)} vs {len(after)} tokens); "
                "vocabulary pruning would change what the model reads"
            )
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id"):
        old_value, new_value = getattr(old, name), getattr(new, name)
        if old_value is not None and new_value != new_id[old_value]:
            raise VocabularyError(f"{name}: {old_value} became {new_value}, expected {new_id[old_value]}")


def prune_model_vocabulary_(model: Donut, kept: Sequence[int]) -> None:
    """Keep the rows ``kept`` (ascending old ids) of the decoder's tied embedding / lm_head, in place."""
    decoder = model.decoder
    embed = decoder.get_input_embeddings()
    index = torch.as_tensor(list(kept), dtype=torch.long, device=embed.weight.device)
    weight = nn.Parameter(embed.weight.detach().index_select(0, index).clone())
    new_id = {old: new for new, old in enumerate(kept)}
    embed.weight = weight
    embed.num_embeddings = len(kept)
    if embed.padding_idx is not None:
        embed.padding_idx = new_id[embed.padding_idx]
    head = decoder.get_output_embeddings()
    if head.weight.data_ptr() == weight.data_ptr() or getattr(decoder.config, "tie_word_embeddings", False):
        head.weight = weight
    else:
        head.weight = nn.Parameter(head.weight.detach().index_select(0, index).clone())
    if getattr(head, "bias", None) is not None:
        head.bias = nn.Parameter(head.bias.detach().index_select(0, index).clone())
    head.out_features = len(kept)
    ids = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "forced_eos_token_id")
    configs = (model.config, model.config.decoder, decoder.config, getattr(model, "generation_config", None))
    for config in {id(c): c for c in configs if c is not None}.values():
        for name in ids:
            value = getattr(config, name, None)
            if isinstance(value, int):
                setattr(config, name, new_id[value])
    model.config.decoder.vocab_size = len(kept)
    decoder.config.vocab_size = len(kept)


def prune_vocabulary(model: Donut, processor: Any, corpus: Sequence[str]) -> tuple[Any, VocabularyPruning]:
    """Prune ``model`` in place to the tokens ``corpus`` needs; return a new processor and a summary.

    ``corpus`` holds the decoder's target texts (task token + json2token(ground truth) + ``</s>``).
    ``processor`` is left as it was (the teacher keeps using it).
    """
    old = processor.tokenizer
    texts = list(corpus)
    if not texts:
        raise VocabularyError("vocabulary pruning needs a corpus of target texts (the training set)")
    encoded = _encode(old, texts)
    kept = tokens_to_keep(old, texts, encoded=encoded)
    rows = model.decoder.get_input_embeddings().num_embeddings
    if kept[-1] >= rows:
        raise VocabularyError(f"token id {kept[-1]} is outside the model's {rows}-row embedding")
    new = prune_tokenizer(old, kept)
    _check_same_tokenisation(old, new, kept, texts, encoded)
    prune_model_vocabulary_(model, kept)
    pruned = copy.copy(processor)
    pruned.tokenizer = new
    return pruned, VocabularyPruning(kept=list(kept), before=rows)
