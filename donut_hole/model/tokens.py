"""DONUT's JSON <-> token-sequence conversion and a tokenizer that needs no download.

A document is taught to the decoder as a flat token sequence. Keys become paired special tokens,
list items are separated by ``<sep/>``; :func:`token2json` inverts :func:`json2token`::

    >>> json2token({"ship_to": {"city": "Lyon"}, "items": [{"sku": "A1"}, {"sku": "B2"}]}, sort_keys=False)
    '<s_ship_to><s_city>Lyon</s_city></s_ship_to><s_items><s_sku>A1</s_sku><sep/><s_sku>B2</s_sku></s_items>'
    >>> token2json('<s_ship_to><s_city>Lyon</s_city></s_ship_to>')
    {'ship_to': {'city': 'Lyon'}}

Both follow clovaai/donut (``DonutModel.json2token`` and ``DonutProcessor.token2json``) so that
checkpoints trained by DONUT's own code read and write the same sequences.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

SEP = "<sep/>"
PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
DEFAULT_TASK_TOKEN = "<s_logistics>"

# The characters a new tokenizer always knows, so that any printed value can be written out.
BASE_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 !\"#$%&'()*+,-./:;=?@[]_°€£"


def json2token(obj: Any, *, sort_keys: bool = True, new_special_tokens: set[str] | None = None) -> str:
    """Serialise a nested dict/list into DONUT's token sequence.

    Keys are sorted (as DONUT does for training targets) unless ``sort_keys=False``. Every key adds
    ``<s_key>`` and ``</s_key>`` to ``new_special_tokens`` when a set is given.
    """
    if isinstance(obj, dict):
        if len(obj) == 1 and "text_sequence" in obj:
            return str(obj["text_sequence"])
        keys = sorted(obj, reverse=True) if sort_keys else list(obj)
        # DONUT sorts keys in reverse order; we keep its convention for compatibility.
        out = []
        for key in keys:
            if new_special_tokens is not None:
                new_special_tokens.update((f"<s_{key}>", f"</s_{key}>"))
            out.append(
                f"<s_{key}>"
                + json2token(obj[key], sort_keys=sort_keys, new_special_tokens=new_special_tokens)
                + f"</s_{key}>"
            )
        return "".join(out)
    if isinstance(obj, list):
        return SEP.join(
            json2token(item, sort_keys=sort_keys, new_special_tokens=new_special_tokens) for item in obj
        )
    return str(obj)


_START = re.compile(r"<s_(.*?)>", re.IGNORECASE)


def token2json(tokens: str, *, categorical_tokens: Iterable[str] = ()) -> dict[str, Any]:
    """Parse a generated sequence back into a nested dict (DONUT's ``token2json``).

    A key whose end tag is missing is dropped; a value list of length one collapses to its item.
    Text with no tags at all comes back as ``{"text_sequence": tokens}``. Top-level parts joined by
    ``<sep/>`` (which a model may write) merge into one dict; a key in several parts keeps every value.
    """
    categorical = set(categorical_tokens)
    result = _token2json(tokens, is_inner=False, categorical=categorical)
    if isinstance(result, dict):
        return result
    merged: dict[str, Any] = {}
    for part in result:
        for key, value in part.items() if isinstance(part, dict) else ():
            if key not in merged:
                merged[key] = value
            else:
                before = merged[key]
                merged[key] = [*(before if isinstance(before, list) else [before]), value]
    return merged


def _token2json(tokens: str, *, is_inner: bool, categorical: set[str]) -> dict[str, Any] | list[Any]:
    output: dict[str, Any] = {}
    while tokens:
        start = _START.search(tokens)
        if start is None:
            break
        key = start.group(1)
        start_token = start.group(0)
        end = re.search(rf"</s_{re.escape(key)}>", tokens, re.IGNORECASE)
        if end is None:
            tokens = tokens.replace(start_token, "")
            continue
        end_token = end.group(0)
        content = re.search(
            f"{re.escape(start_token)}(.*?){re.escape(end_token)}", tokens, re.IGNORECASE | re.DOTALL
        )
        if content is not None:
            inner = content.group(1).strip()
            if "<s_" in inner and "</s_" in inner:  # non-leaf node
                value = _token2json(inner, is_inner=True, categorical=categorical)
                assert isinstance(value, list)  # inner calls always return a list
                if value:
                    output[key] = value[0] if len(value) == 1 else value
            else:  # leaf node
                leaves = []
                for leaf in inner.split(SEP):
                    leaf = leaf.strip()
                    if leaf in categorical and leaf.startswith("<") and leaf.endswith("/>"):
                        leaf = leaf[1:-2]
                    leaves.append(leaf)
                output[key] = leaves[0] if len(leaves) == 1 else leaves
        tokens = tokens[tokens.find(end_token) + len(end_token) :].strip()
        if tokens.startswith(SEP):  # a list of dicts continues
            rest = _token2json(tokens[len(SEP) :], is_inner=True, categorical=categorical)
            assert isinstance(rest, list)
            return [output, *rest]
    if output:
        return [output] if is_inner else output
    return [] if is_inner else {"text_sequence": tokens}


def field_tokens(documents: Iterable[Any]) -> list[str]:
    """All ``<s_key>``/``</s_key>`` tokens the documents need, sorted (stable vocabulary order)."""
    found: set[str] = set()
    for doc in documents:
        json2token(doc, new_special_tokens=found)
    return sorted(found)


def build_tokenizer(
    *,
    field_special_tokens: Iterable[str],
    corpus: Iterable[str] = (),
    vocab_size: int = 0,
    task_token: str = DEFAULT_TASK_TOKEN,
    alphabet: str = BASE_ALPHABET,
    model_max_length: int = 512,
) -> Any:
    """A fast tokenizer for a new DONUT, made locally with ``tokenizers`` (no hub access).

    With ``vocab_size == 0`` it is character level over ``alphabet``; otherwise BPE merges are learned on
    ``corpus`` (the printed values) up to ``vocab_size``. Field tags, ``<sep/>`` and the task token are
    special tokens, so they are never split and survive ``decode(skip_special_tokens=False)``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, BOS, EOS, UNK]
    extra = [task_token, SEP, *sorted(set(field_special_tokens))]
    tok = Tokenizer(models.BPE(unk_token=UNK, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    chars = sorted(set(alphabet.replace(" ", "")) | {"▁"})
    trainer = trainers.BpeTrainer(
        vocab_size=max(vocab_size, len(specials) + len(chars)),
        special_tokens=specials,
        initial_alphabet=chars,
        limit_alphabet=len(chars),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus) if vocab_size else [], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        model_max_length=model_max_length,
    )
    fast.add_special_tokens({"additional_special_tokens": extra})
    return fast


def leaf_values(documents: Iterable[Any]) -> list[str]:
    """Every printed value in the documents (the corpus a BPE tokenizer learns from)."""
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        else:
            out.append(str(node))

    for doc in documents:
        walk(doc)
    return out
