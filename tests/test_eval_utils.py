"""eval_utils against direct, independent computations on a tiny random Llama."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from arguments import UserError
from eval_utils import (bits_per_byte, choice_logliks, continuation_ids, document_start_token, greedy_completions,
                        probe_accuracy, read_probes, rolling_windows)

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Tiếng Việt có dấu: người, được.", "def main():\n    x"]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def direct_nll(model, ids, context=1):
    """Sum of -log p(token) over ids[context:], one unbatched forward pass."""
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    return -sum(logp[i - 1, ids[i]].item() for i in range(context, len(ids)))


def test_rolling_windows_docstring_example():
    assert rolling_windows([5, 6, 7, 8, 9], start_token=1, block_size=2) == [([1, 5, 6], 1), ([6, 7, 8], 1),
                                                                             ([7, 8, 9], 2)]
    windows = rolling_windows(list(range(10, 30)), 1, 6)
    scored = [t for w, c in windows for t in w[c:]]
    assert scored == list(range(10, 30))  # every token scored exactly once, in order
    assert max(len(w) for w, _ in windows) == 7  # the model reads at most block_size of them


def test_document_start_is_eos_without_bos(tiny_tokenizer):
    assert document_start_token(tiny_tokenizer) == tiny_tokenizer.eos_token_id


@pytest.mark.parametrize("block_size, batch_size", [(256, 1), (256, 3), (5, 4)])
def test_bits_per_byte_matches_a_direct_computation(model, tiny_tokenizer, block_size, batch_size):
    start = tiny_tokenizer.eos_token_id
    nats = tokens = 0
    for text in TEXTS:
        for window, context in rolling_windows(tiny_tokenizer(text, add_special_tokens=False)["input_ids"], start,
                                               block_size):
            nats += direct_nll(model, window, context)
            tokens += len(window) - context
    n_bytes = sum(len(t.encode()) for t in TEXTS)
    got = bits_per_byte(model, tiny_tokenizer, TEXTS, block_size=block_size, batch_size=batch_size)
    assert got["tokens"] == tokens and got["bytes"] == n_bytes
    assert got["bpb"] == pytest.approx(nats / math.log(2) / n_bytes, abs=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(nats / tokens), rel=1e-5)


def test_bits_per_byte_of_nothing_is_a_user_error(model, tiny_tokenizer):
    with pytest.raises(UserError, match="no text to evaluate"):
        bits_per_byte(model, tiny_tokenizer, ["", ""])


def test_continuation_split_moves_the_space_to_the_answer(tiny_tokenizer):
    context, answer = continuation_ids(tiny_tokenizer, "The quick ", "fox")
    assert context == tiny_tokenizer("The quick", add_special_tokens=False)["input_ids"]
    assert context + answer == tiny_tokenizer("The quick fox", add_special_tokens=False)["input_ids"]


def test_choice_logliks_and_probe_accuracy(model, tiny_tokenizer, tmp_path):
    start = tiny_tokenizer.eos_token_id
    scores = choice_logliks(model, tiny_tokenizer, "The quick brown", [" fox", " dog"])
    for score, choice in zip(scores, [" fox", " dog"]):
        context, answer = continuation_ids(tiny_tokenizer, "The quick brown", choice)
        assert score == pytest.approx(-direct_nll(model, [start] + context + answer, 1 + len(context)), abs=1e-4)
    path = tmp_path / "probes.jsonl"
    best, worst = (" fox", " dog") if scores[0] > scores[1] else (" dog", " fox")
    path.write_text(f'{{"prompt": "The quick brown", "answer": "{best}", "distractors": ["{worst}"]}}\n'
                    f'{{"prompt": "The quick brown", "answer": "{worst}", "distractors": ["{best}"]}}\n')
    result = probe_accuracy(model, tiny_tokenizer, read_probes(str(path)))
    assert result["acc"] == 0.5 and [r["correct"] for r in result["results"]] == [True, False]


def test_bad_probe_file_names_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a", "answer": "b", "distractors": ["c"]}\n{"prompt": "a"}\n')
    with pytest.raises(UserError, match=r"p.jsonl:2: a probe needs .* missing answer, distractors"):
        read_probes(str(path))
    path.write_text('{"prompt": "a", "answer": "b", "distractors": []}\n')
    with pytest.raises(UserError, match=r"p.jsonl:1: distractors must be a non-empty list"):
        read_probes(str(path))


def test_greedy_completion_is_the_argmax_continuation(model, tiny_tokenizer):
    ids = [tiny_tokenizer.eos_token_id] + tiny_tokenizer("The quick", add_special_tokens=False)["input_ids"]
    expected = []
    for _ in range(5):
        with torch.no_grad():
            expected.append(int(model(torch.tensor([ids + expected])).logits[0, -1].argmax()))
    got = greedy_completions(model, tiny_tokenizer, ["The quick"], max_new_tokens=5)["The quick"]
    assert got == tiny_tokenizer.decode(expected, skip_special_tokens=True)
