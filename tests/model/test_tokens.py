from hypothesis import given, settings
from hypothesis import strategies as st

from donut_hole.model.tokens import BASE_ALPHABET, build_tokenizer, field_tokens, json2token, token2json


def test_json2token_matches_donut_format():
    doc = {"ship_to": {"city": "Lyon", "name": "A. Roy"}, "items": [{"sku": "A1"}, {"sku": "B2"}]}
    # DONUT sorts keys in reverse order: ship_to > items, name > city.
    assert json2token(doc) == (
        "<s_ship_to><s_name>A. Roy</s_name><s_city>Lyon</s_city></s_ship_to>"
        "<s_items><s_sku>A1</s_sku><sep/><s_sku>B2</s_sku></s_items>"
    )
    assert json2token({"tags": ["x", "y"]}) == "<s_tags>x<sep/>y</s_tags>"


def test_json2token_collects_special_tokens():
    found: set[str] = set()
    json2token({"a": {"b": "1"}}, new_special_tokens=found)
    assert found == {"<s_a>", "</s_a>", "<s_b>", "</s_b>"}
    assert field_tokens([{"a": "1"}, {"c": [{"d": "2"}, {"d": "3"}]}]) == sorted(
        ["<s_a>", "</s_a>", "<s_c>", "</s_c>", "<s_d>", "</s_d>"]
    )


def test_token2json_like_donut():
    assert token2json("<s_a>x</s_a><s_b>y<sep/>z</s_b>") == {"a": "x", "b": ["y", "z"]}
    # An unclosed key is dropped, as DONUT does, and the rest still parses.
    assert token2json("<s_a>x<s_b>y</s_b>") == {"b": "y"}
    assert token2json("no tags here") == {"text_sequence": "no tags here"}
    assert token2json("") == {"text_sequence": ""}
    assert token2json("<s_c><s_d>1</s_d><sep/><s_d>2</s_d></s_c>") == {"c": [{"d": "1"}, {"d": "2"}]}


def test_token2json_merges_top_level_parts_a_model_writes():
    """A half-trained model may write ``<sep/>`` between top-level fields: one dict, nothing lost."""
    assert token2json("<s_a>x</s_a><sep/><s_b>y</s_b>") == {"a": "x", "b": "y"}
    assert token2json("<s_a>x</s_a><sep/><s_a>y</s_a><sep/><s_a>z</s_a>") == {"a": ["x", "y", "z"]}
    assert token2json("<s_a>x<sep/>w</s_a><sep/><s_a>y</s_a>") == {"a": ["x", "w", "y"]}
    assert token2json("<s_a>x</s_a><sep/>no tags") == {"a": "x"}


_text = (
    st.text(alphabet=BASE_ALPHABET.replace("<", "").replace(">", ""), min_size=1, max_size=12)
    .map(str.strip)
    .filter(bool)
)


def _doc(depth: int) -> st.SearchStrategy:
    # Keys differ per depth: DONUT's format cannot nest a key inside itself.
    keys = st.sampled_from([f"k{depth}_{i}" for i in range(4)])
    leaf = _text | st.lists(_text, min_size=2, max_size=3)
    if depth >= 2:
        return st.dictionaries(keys, leaf, min_size=1, max_size=3)
    child = _doc(depth + 1)
    value = leaf | child | st.lists(child, min_size=2, max_size=3)
    return st.dictionaries(keys, value, min_size=1, max_size=3)


@settings(max_examples=200, deadline=None)
@given(_doc(0))
def test_round_trip(doc):
    assert token2json(json2token(doc)) == doc


def test_tokenizer_keeps_special_tokens_whole():
    tok = build_tokenizer(field_special_tokens=["<s_city>", "</s_city>"])
    text = "<s_logistics><s_city>Saint-Étienne 42</s_city><sep/></s>"
    ids = tok(text, add_special_tokens=False).input_ids
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[:2] == ["<s_logistics>", "<s_city>"]
    assert "</s_city>" in pieces and "<sep/>" in pieces
    # 'É' is outside the alphabet: it becomes <unk>, everything else decodes back exactly.
    assert tok.decode(ids) == text.replace("É", "<unk>")


def test_bpe_tokenizer_learns_merges_and_round_trips():
    corpus = ["DELIVERY NOTE 12 Rue de Lyon"] * 20
    char_level = build_tokenizer(field_special_tokens=[])
    bpe = build_tokenizer(field_special_tokens=[], corpus=corpus, vocab_size=150)
    assert len(bpe) > len(char_level)
    text = "DELIVERY NOTE 12 Rue de Lyon"
    ids = bpe(text, add_special_tokens=False).input_ids
    assert len(ids) < len(text)
    assert bpe.decode(ids) == text
