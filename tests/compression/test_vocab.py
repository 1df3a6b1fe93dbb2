"""Vocabulary pruning: same logits for the kept tokens, same tokenisation, saved and reloaded as a DONUT."""

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from donut_hole.compression.batches import target_texts
from donut_hole.compression.compress import compress
from donut_hole.compression.recipe import CompressRecipe, load_recipe
from donut_hole.compression.vocab import (
    VocabularyError,
    prune_tokenizer,
    prune_vocabulary,
    tokens_to_keep,
)
from donut_hole.documents.synth import generate
from donut_hole.evaluation.dataset import read_dataset
from donut_hole.model.build import load_model, new_model, save_model, task_token_of
from donut_hole.model.predict import DonutReader
from donut_hole.model.tokens import field_tokens, leaf_values

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("vocab")
    train = generate(["shipping_label", "bill_of_lading"], n=10, out=root / "train", seed=3, progress=False)
    val = generate(["shipping_label", "bill_of_lading"], n=4, out=root / "val", seed=4, progress=False)
    return {"root": root, "train": train, "val": val, "docs": [s.gt_parse for s in read_dataset(train)]}


@pytest.mark.parametrize("bpe_vocab", [0, 300], ids=["characters", "bpe"])
def test_pruned_model_gives_the_same_logits_for_kept_tokens(documents, tmp_path, bpe_vocab):
    docs = documents["docs"]
    model, processor = new_model("tiny", documents=docs, corpus_vocab_size=bpe_vocab, image_size=(160, 160))
    corpus = target_texts(docs[:6], model, processor)  # the other documents are unseen text
    old_ids = processor.tokenizer(corpus[0], add_special_tokens=False, return_tensors="pt")["input_ids"]
    pixels = torch.randn(1, 3, 160, 160)
    task = task_token_of(model, processor)
    with torch.no_grad():
        full = model(pixel_values=pixels, decoder_input_ids=old_ids).logits

    pruned, info = prune_vocabulary(model, processor, corpus)

    assert info.after < info.before and info.removed == info.before - info.after
    assert model.decoder.lm_head.weight.shape[0] == info.after == len(pruned.tokenizer)
    assert model.decoder.lm_head.weight is model.decoder.get_input_embeddings().weight  # still tied
    new_ids = pruned.tokenizer(corpus[0], add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert torch.equal(new_ids, info.token_map(pruned.tokenizer.unk_token_id)[old_ids])
    with torch.no_grad():
        small = model(pixel_values=pixels, decoder_input_ids=new_ids).logits
    assert torch.equal(small, full[..., info.kept])
    # the teacher's processor is untouched; special ids follow their tokens
    assert len(processor.tokenizer) == info.before
    tok = pruned.tokenizer
    assert tok.convert_ids_to_tokens(model.config.decoder_start_token_id) == task
    assert (tok.pad_token_id, tok.eos_token_id) == (model.config.pad_token_id, model.config.eos_token_id)
    assert set(field_tokens(docs)) <= set(tok.get_vocab())  # specials are always kept

    folder = save_model(model, pruned, tmp_path / "pruned")
    again, again_processor = load_model(folder)
    with torch.no_grad():
        reloaded = again(pixel_values=pixels, decoder_input_ids=new_ids).logits
    assert torch.equal(reloaded, small)
    assert again_processor.tokenizer(corpus[0], add_special_tokens=False)["input_ids"] == new_ids[0].tolist()


def test_unigram_tokenizer_like_donut_base_prunes_to_the_same_segmentation(documents):
    docs = documents["docs"]
    values = leaf_values(docs)
    backend = Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.train_from_iterator(
        values * 4,
        trainers.UnigramTrainer(
            vocab_size=500, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], unk_token="<unk>"
        ),
    )
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    tok.add_special_tokens({"additional_special_tokens": ["<s_logistics>", *field_tokens(docs)]})
    corpus = [f"<s_logistics>{v}</s>" for v in values[:40]]

    kept = tokens_to_keep(tok, corpus)
    new = prune_tokenizer(tok, kept)

    assert len(new) == len(kept) < len(tok)
    index = {old: i for i, old in enumerate(kept)}
    for text in corpus:
        assert new(text)["input_ids"] == [index[i] for i in tok(text)["input_ids"]]  # with <s> ... </s>
        assert new.decode(new(text)["input_ids"], skip_special_tokens=True) == tok.decode(
            tok(text)["input_ids"], skip_special_tokens=True
        )


def test_bpe_keeps_merge_ancestors(documents):
    _, processor = new_model("tiny", documents=documents["docs"], corpus_vocab_size=300)
    tok = processor.tokenizer
    longest = max((t for t in tok.get_vocab() if t not in tok.all_special_tokens), key=len)
    kept = tokens_to_keep(tok, [longest.replace("▁", " ").strip()])
    names = set(tok.convert_ids_to_tokens(kept))
    assert longest.replace("▁", "") in {n.replace("▁", "") for n in names}
    new = prune_tokenizer(tok, kept)
    text = longest.replace("▁", " ").strip()
    assert new.convert_ids_to_tokens(
        new(text, add_special_tokens=False)["input_ids"]
    ) == tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])


def test_empty_corpus_is_refused(documents):
    model, processor = new_model("tiny", documents=documents["docs"], image_size=(160, 160))
    with pytest.raises(VocabularyError, match="corpus"):
        prune_vocabulary(model, processor, [])


def test_compress_with_vocabulary_pruning(documents):
    docs = documents["docs"]
    model, processor = new_model("tiny", documents=docs, image_size=(160, 160))
    teacher = save_model(model, processor, documents["root"] / "teacher")
    recipe = load_recipe(
        CONFIGS / "tiny.yaml",
        CompressRecipe,
        overrides={
            "train.steps": 0,
            "train.max_new_tokens": 6,
            "prune.vocabulary": True,
            "report.cka_samples": 4,
            "report.latency_samples": 1,
            "report.latency_repeats": 1,
        },
    )
    with pytest.raises(ValueError, match="--train"):
        compress(
            recipe,
            teacher_path=teacher,
            train_dir=None,
            val_dir=documents["val"],
            out_dir=documents["root"] / "x",
        )

    report = compress(
        recipe,
        teacher_path=teacher,
        train_dir=documents["train"],
        val_dir=documents["val"],
        out_dir=documents["root"] / "run",
        progress=False,
    )

    vocab = report.student_structure["vocabulary"]
    assert vocab["vocab_after"] < vocab["vocab_before"] == len(processor.tokenizer)
    assert 0.0 <= report.cka["global"] <= 1.0
    student, student_processor = load_model(documents["root"] / "run" / "model")
    assert student.config.decoder.vocab_size == vocab["vocab_after"] == len(student_processor.tokenizer)
    assert report.student.parameters < report.teacher.parameters
    reader = DonutReader(student, student_processor, max_new_tokens=4)
    assert len(reader.predict([s.image_path for s in read_dataset(documents["val"])])) == 4
