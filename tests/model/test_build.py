import json
import shutil

import pytest
import torch
from PIL import Image

from donut_hole.model.build import (
    PRESETS,
    ModelLoadError,
    count_parameters,
    load_model,
    model_config,
    new_model,
)


def test_tiny_preset_is_small_and_well_formed():
    model, processor = new_model("tiny", documents=[{"a": "1"}])
    n = count_parameters(model)
    assert 1_000_000 < n < 10_000_000
    assert model.config.encoder.model_type == "donut-swin"
    assert model.config.decoder.model_type == "mbart"
    assert model.config.decoder.add_cross_attention
    assert processor.tokenizer.convert_ids_to_tokens(model.config.decoder_start_token_id) == "<s_logistics>"
    assert "<s_a>" in processor.tokenizer.get_vocab()


def test_donut_base_layout_config():
    spec = PRESETS["donut-base"]
    config = model_config(
        spec, vocab_size=57525, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=0
    )
    assert list(config.encoder.depths) == [2, 2, 14, 2]
    assert config.encoder.embed_dim == 128 and config.encoder.window_size == 10
    assert list(config.encoder.image_size) == [2560, 1920]
    assert config.encoder.hidden_size == config.decoder.d_model == 1024
    assert config.decoder.decoder_layers == 4 and config.decoder.vocab_size == 57525


def test_save_and_reload_gives_the_same_model(tiny_model_dir):
    model, processor = load_model(tiny_model_dir)
    again, _ = load_model(tiny_model_dir)
    pixels = torch.randn(1, 3, 160, 160)
    ids = torch.tensor([[model.config.decoder_start_token_id]])
    with torch.no_grad():
        a = model(pixel_values=pixels, decoder_input_ids=ids).logits
        b = again(pixel_values=pixels, decoder_input_ids=ids).logits
    assert torch.equal(a, b)
    assert processor.image_processor.size == {"height": 160, "width": 160}
    weights = list(tiny_model_dir.glob("*.safetensors"))
    assert weights
    config_mode = (tiny_model_dir / "config.json").stat().st_mode & 0o777
    assert all(w.stat().st_mode & 0o777 == config_mode for w in weights)  # readable as the other files are


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(ModelLoadError, match=r"config\.json is missing"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vision-encoder-decoder"}))
    with pytest.raises(ModelLoadError, match="no processor"):
        load_model(tmp_path)


def test_image_too_small_for_the_window_is_refused():
    with pytest.raises(ValueError, match="too small for window"):
        new_model("tiny", documents=[{"a": "1"}], image_size=(96, 96))


def test_a_folder_without_its_own_tokenizer_is_refused_in_one_line(tmp_path, tiny_model_dir):
    from published import write_published
    from typer.testing import CliRunner

    from donut_hole.cli import app

    folder = write_published(tmp_path / "cord", kind="cord-v2")
    (folder / "tokenizer.json").unlink()  # the published layout's other files stay
    with pytest.raises(ModelLoadError, match=r"has no tokenizer: none of tokenizer\.json"):
        load_model(folder)
    scan = tmp_path / "scan.png"
    Image.new("RGB", (64, 64), "white").save(scan)
    result = CliRunner().invoke(app, ["predict", "--model", str(folder), str(scan)])
    said = " ".join(result.output.split())  # the console wraps long lines
    assert result.exit_code == 2 and said.startswith("error: ") and "has no tokenizer" in said
    assert "Traceback" not in said

    for path in folder.glob("*.json"):  # another model's tokenizer, with more tokens than this one embeds
        if path.name.startswith(("tokenizer", "special_tokens", "added_tokens")):
            path.unlink()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, folder / name)
    with pytest.raises(ModelLoadError, match=r"its tokenizer has \d+ tokens but the model's decoder embeds"):
        load_model(folder)


def test_saved_folders_name_what_transformers_4_and_5_both_read(tiny_model_dir):
    """What transformers 4.x needs (checked for real by scripts/check_interop.sh in a 4.57 environment)."""
    tokenizer_config = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert "<s_logistics>" in tokenizer_config["additional_special_tokens"]
    assert "extra_special_tokens" not in tokenizer_config  # a list there is named tokens to 4.x: it fails
    decoder = json.loads((tiny_model_dir / "config.json").read_text())["decoder"]
    for unused, own in (
        ("encoder_attention_heads", "decoder_attention_heads"),
        ("encoder_layers", "decoder_layers"),
    ):
        assert decoder[unused] == decoder[own]
    _, processor = load_model(tiny_model_dir)
    assert "<s_logistics>" in processor.tokenizer.all_special_tokens  # 5.x keeps them special
