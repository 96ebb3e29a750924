"""Text for scoring, distillation and the held-out fidelity check.

Default: Debian's ``wordnet-base`` glosses (~117k) and example sentences (~48k), which are
short everyday English; the held-out set is drawn from the example sentences ("Coffee and tea stimulate me"). Fidelity is judged on everyday
text, and distilling on a technical corpus transfers poorly to it (issue 2: 0.62 vs 0.81
mean cosine). To also train on longer inputs, a share of training items joins two to four
training sentences into one passage. Where WordNet is absent the job falls back to text
that ships with Python (``pydoc_data`` topics and standard-library docstrings) and says so.

The held-out split is chosen by a hash of each text, so it is the same whatever the order
or size of the corpus, and no held-out sentence ever enters a training passage.

Training also reads Debian's ``fortunes`` (sayings, jokes, quips and short exchanges in
everyday English, about 9,000 of them from the prose files), so that the student does not
learn dictionary style alone. A second held-out set of another style is taken from a source
that is never trained on: the English dialogues of the ``chatterbot-corpus`` PyPI package
(greetings, questions, small talk, support messages). Fidelity is reported on both; the
second predicts what users typing conversational text see.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Corpus", "CorpusError", "FORTUNES_DIR", "load_corpus", "WORDNET_DIR", "everyday_texts"]

WORDNET_DIR = Path("/usr/share/wordnet")
FORTUNES_DIR = Path("/usr/share/games/fortunes")
# Prose files of Debian's fortunes: everyday sayings and exchanges (not ASCII art, code, Unix
# lore, Star Trek or the files whose humour is about ethnic groups or drugs).
FORTUNE_FILES = ("cookie", "education", "food", "fortunes", "humorists", "kids", "law", "literature", "love",
                 "medicine", "men-women", "miscellaneous", "people", "pets", "platitudes", "politics", "riddles",
                 "science", "sports", "wisdom", "work")
HELDOUT_SETS = ("wordnet", "everyday")
MIN_TRAIN_TEXTS = 64
_QUOTED = re.compile(r'"([^"]{12,300})"')


class CorpusError(ValueError):
    """The corpus is missing, unreadable or too small."""


@dataclass(frozen=True)
class Corpus:
    source: str  # wordnet | wordnet+fortunes | file | python-docs
    path: str | None
    train: list[str]
    heldout: list[str]  # drawn from the training source by hash, never trained on
    sha256: str
    note: str = ""
    everyday: tuple[str, ...] = ()  # a second held-out set from a source never trained on (chatterbot-corpus)

    @property
    def heldout_sets(self) -> dict[str, list[str]]:
        """Every held-out set with texts, by name: ``heldout`` (from the training source), ``everyday``."""
        sets = {"heldout": self.heldout}
        if self.everyday:
            sets["everyday"] = list(self.everyday)
        return sets


def _fortune_texts(root: Path) -> list[str]:
    """Fortunes from the prose files, one text each: attribution lines dropped, whitespace collapsed."""
    texts: list[str] = []
    for name in FORTUNE_FILES:
        path = root / name
        if not path.is_file():
            continue
        for block in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            lines = [ln for ln in block.splitlines() if not ln.strip().startswith("--")]
            text = " ".join(" ".join(lines).split())
            if 12 <= len(text) <= 400 and sum(ch.isalpha() for ch in text) > 0.6 * len(text):
                texts.append(text)
    return texts


def everyday_texts(limit: int, seed: int = 0) -> list[str]:
    """Up to ``limit`` distinct English utterances from ``chatterbot-corpus`` (empty when not installed)."""
    try:
        import chatterbot_corpus
        import yaml
    except ImportError:
        return []
    root = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    found: set[str] = set()
    for path in sorted(root.glob("*.yml")):
        if path.stem in ("coding", "botprofile"):
            continue  # source code and the bot's persona, not everyday text
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for dialogue in data.get("conversations", []):
            for turn in dialogue:
                text = " ".join(str(turn).split())
                if 12 <= len(text) <= 400:
                    found.add(text)
    texts = sorted(found)
    random.Random(seed).shuffle(texts)
    return texts[:limit]

def _wordnet_texts(root: Path) -> tuple[list[str], set[str]]:
    """Glosses and example sentences; the examples (everyday sentences) are the held-out candidates."""
    texts: list[str] = []
    examples: set[str] = set()
    for part in ("noun", "verb", "adj", "adv"):
        for line in (root / f"data.{part}").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or " | " not in line:
                continue  # licence header
            gloss = line.split(" | ", 1)[1].strip()
            quoted = [m.strip() for m in _QUOTED.findall(gloss)]
            texts.extend(quoted)
            examples.update(quoted)
            definition = gloss.split(";")[0].strip().strip('"')
            if len(definition) >= 12:
                texts.append(definition)
    return texts, examples


def _python_doc_texts() -> list[str]:
    import pkgutil
    import pydoc_data.topics as topics

    texts: list[str] = []
    for body in topics.topics.values():
        texts.extend(p.strip() for p in re.split(r"\n\s*\n", body) if 20 <= len(p.strip()) <= 600)
    for mod in pkgutil.iter_modules():
        if mod.name.startswith("_"):
            continue
        for p in (mod.module_finder.path,) if hasattr(mod.module_finder, "path") else ():
            src = Path(p) / f"{mod.name}.py"
            if src.is_file() and src.stat().st_size < 400_000:
                for doc in re.findall(r'"""(.*?)"""', src.read_text(errors="replace"), flags=re.S):
                    texts.extend(s.strip() for s in re.split(r"\n\s*\n", doc) if 20 <= len(s.strip()) <= 600)
    return texts


def _is_heldout(text: str, per_mille: int) -> bool:
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) % 1000 < per_mille


def _split(
    texts: list[str], n_heldout: int, max_train: int, seed: int, candidates: set[str] | None = None
) -> tuple[list[str], list[str]]:
    unique = sorted(set(t for t in (s.strip() for s in texts) if t))
    pool = unique if candidates is None else sorted(candidates)
    if len(unique) < n_heldout + MIN_TRAIN_TEXTS:
        raise CorpusError(
            f"the corpus has {len(unique)} distinct texts; it needs at least {n_heldout + MIN_TRAIN_TEXTS} "
            f"({n_heldout} held out for fidelity and {MIN_TRAIN_TEXTS} to train on)"
        )
    per_mille = max(1, min(500, (2 * n_heldout * 1000) // len(pool) + 1))
    heldout_set = {t for t in pool if _is_heldout(t, per_mille)}
    heldout = sorted(heldout_set)
    train = [t for t in unique if t not in heldout_set]
    rng = random.Random(seed)
    rng.shuffle(heldout)
    rng.shuffle(train)
    heldout = heldout[:n_heldout]
    # Passages: a quarter of the items join 2-4 training sentences, so longer inputs are seen too.
    n_passages = len(train) // 4
    passages = [" ".join(rng.sample(train, rng.randint(2, 4))) for _ in range(n_passages)]
    train = (train + passages)[: max_train]
    rng.shuffle(train)
    return train, heldout


def load_corpus(path: str | Path | None, *, n_heldout: int, max_train: int, seed: int = 0,
                n_everyday: int = 0) -> Corpus:
    """Read the corpus (``path``: one text per line; ``None``: WordNet and fortunes, else Python's
    own docs) and up to ``n_everyday`` texts of the second held-out set."""
    note = ""
    candidates: set[str] | None = None
    if path is not None:
        path = Path(path)
        try:
            texts = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise CorpusError(f"corpus file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            raise CorpusError(f"cannot read corpus file {path}: {e}") from None
        source, where = "file", str(path)
    elif (WORDNET_DIR / "data.noun").is_file():
        texts, candidates = _wordnet_texts(WORDNET_DIR)
        source, where = "wordnet", str(WORDNET_DIR)
        fortunes = _fortune_texts(FORTUNES_DIR)
        if fortunes:
            texts += fortunes
            source, where = "wordnet+fortunes", f"{WORDNET_DIR}, {FORTUNES_DIR}"
        else:
            note = "Debian's fortunes is not installed: training on WordNet alone (dictionary style)"
    else:
        texts, source, where = _python_doc_texts(), "python-docs", None
        note = ("WordNet (Debian package wordnet-base) is not installed; fell back to Python's own "
                "documentation, which is technical text: expect lower fidelity on everyday English")
    everyday = everyday_texts(n_everyday, seed) if n_everyday else []
    if n_everyday and not everyday:
        note = "; ".join(filter(None, [note, "chatterbot-corpus is not installed: no second (everyday) held-out set"]))
    held_elsewhere = set(everyday)
    texts = [t for t in texts if t.strip() not in held_elsewhere]  # the everyday set is never trained on
    digest = hashlib.sha256("\n".join(sorted(set(texts)) + ["--everyday--"] + everyday).encode()).hexdigest()
    train, heldout = _split(texts, n_heldout, max_train, seed, candidates)
    return Corpus(source, where, train, heldout, digest, note, tuple(everyday))
