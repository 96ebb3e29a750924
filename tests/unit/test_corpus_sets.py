"""The corpus: fortunes parsed into training texts, and a second held-out set that is never trained on."""

from __future__ import annotations

import pytest

from service.pruning import corpus as corpus_module
from service.pruning.corpus import _fortune_texts, everyday_texts, load_corpus


def test_fortunes_become_one_text_each_without_attributions(tmp_path):
    (tmp_path / "people").write_text(
        "A friend is a present you give yourself.\n\t\t-- Robert Louis Stevenson\n%\n"
        "A bore is a man who talks so much about himself that you can't talk about\nyourself.\n%\n"
        "short\n%\n"
        "  ___  \n |___| \n  / \\  ascii art is mostly not letters ......... \n")
    (tmp_path / "ascii-art").write_text("never read: not one of the prose files\n")
    texts = _fortune_texts(tmp_path)
    assert texts == ["A friend is a present you give yourself.",
                     "A bore is a man who talks so much about himself that you can't talk about yourself."]


def test_everyday_set_is_dialogue_without_code_and_limited():
    texts = everyday_texts(300, seed=1)
    if not texts:
        pytest.skip("chatterbot-corpus is not installed")
    assert len(texts) == 300 == len(set(texts))
    assert not any("```" in t or "def " in t for t in texts)  # coding.yml is left out
    assert everyday_texts(300, seed=1) == texts  # deterministic for a seed


def test_everyday_texts_never_enter_training_even_when_the_corpus_file_has_them(tmp_path, monkeypatch):
    everyday = [f"how are you doing today, friend number {i}?" for i in range(40)]
    monkeypatch.setattr(corpus_module, "everyday_texts", lambda limit, seed=0: everyday[:limit])
    lines = [f"training sentence number {i} about the weather" for i in range(400)] + everyday
    path = tmp_path / "c.txt"
    path.write_text("\n".join(lines))
    c = load_corpus(path, n_heldout=50, max_train=10_000, n_everyday=40)
    assert list(c.everyday) == everyday
    assert set(c.heldout_sets) == {"heldout", "everyday"}
    joined = " ".join(c.train)
    assert not any(t in joined for t in everyday)  # not as items, not inside passages
    assert not set(everyday) & set(c.heldout)
    without = load_corpus(path, n_heldout=50, max_train=10_000, n_everyday=0)
    assert without.everyday == () and set(without.heldout_sets) == {"heldout"}
    assert without.sha256 != c.sha256  # the held-out set is part of the fingerprint
