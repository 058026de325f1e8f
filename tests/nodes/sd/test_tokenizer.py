"""The shipped CLIP vocabulary gives the token ids published for CLIP."""

from latentgraph.nodes.sd.tokenizer import load_clip_tokenizer


def test_known_token_ids() -> None:
    tok = load_clip_tokenizer()
    assert len(tok) == 49408
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok("A photo of an astronaut riding a horse").input_ids == [
        49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 49407]


def test_padding_tokens_per_family() -> None:
    sd1 = load_clip_tokenizer()("a cat", padding="max_length", max_length=6).input_ids
    sd2 = load_clip_tokenizer("!")("a cat", padding="max_length", max_length=6).input_ids
    assert sd1 == [49406, 320, 2368, 49407, 49407, 49407]
    assert sd2 == [49406, 320, 2368, 49407, 0, 0]
