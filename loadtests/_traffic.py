"""Realistic request bodies for ``POST /v1/embeddings`` (plain Python, no Locust import).

Texts are everyday English sentences of varied length: WordNet's example sentences
(Debian ``wordnet-base``, ``/usr/share/wordnet/data.*``) when installed, else a built-in list;
a share of texts joins several sentences into a short paragraph, so long inputs occur too.
A share of requests carries several inputs (a list), the rest one string. Each request names a
user drawn from a fixed pool, so the router's sticky assignment sees repeat visitors.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache
from pathlib import Path

__all__ = ["Traffic", "sentences"]

WORDNET_DIR = Path("/usr/share/wordnet")
_QUOTED = re.compile(r'"([^"]{12,300})"')

_BUILTIN = [
    "The train was late again this morning.",
    "She poured the coffee and sat down by the window.",
    "Can you recommend a good book about the history of mathematics?",
    "The committee postponed its decision until next week.",
    "Our flight to Lisbon was cancelled because of the storm.",
    "He fixed the bicycle with nothing but a spoon and some wire.",
    "Prices for fresh vegetables rose sharply after the drought.",
    "Please remember to water the plants while I am away.",
    "The museum opens at nine and closes at five on weekdays.",
    "A quiet street in the old town is the best place for a walk.",
    "Researchers measured how quickly the glacier was melting.",
    "The new policy applies to every employee, including contractors.",
    "I could not find my keys anywhere, so I called a locksmith.",
    "The children built a sandcastle that the tide washed away.",
    "Heavy rain is expected across the north of the country tonight.",
    "How long does it take to learn to play the violin well?",
    "The restaurant on the corner serves the best soup in the city.",
    "He apologised for the misunderstanding and offered a refund.",
    "The orchestra rehearsed the symphony for three months.",
    "Store the medicine in a cool, dry place away from children.",
    "The bridge was closed for repairs during the whole summer.",
    "Her presentation explained the results clearly and briefly.",
    "We watched the sun set over the hills from the terrace.",
    "The software update fixed the crash but made startup slower.",
    "Most of the audience left before the final speech.",
    "Tea and coffee are served in the lobby every afternoon.",
    "The dog barked at every car that drove past the gate.",
    "A sudden noise woke the whole household at midnight.",
    "They planted apple trees along the edge of the field.",
    "The report recommends replacing the old heating system.",
]


@lru_cache(maxsize=1)
def sentences() -> tuple[str, ...]:
    """WordNet example sentences if the package is installed, else the built-in list."""
    found: set[str] = set()
    for part in ("noun", "verb", "adj", "adv"):
        path = WORDNET_DIR / f"data.{part}"
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if " | " in line and not line.startswith("  "):
                found.update(m.strip() for m in _QUOTED.findall(line.split(" | ", 1)[1]))
    return tuple(sorted(found)) if len(found) >= 100 else tuple(_BUILTIN)


class Traffic:
    """Draws request bodies and headers; one instance per simulated user (it holds that user's RNG)."""

    def __init__(self, *, multi_share: float = 0.2, max_inputs: int = 8, paragraph_share: float = 0.15,
                 user_pool: int = 1000, variant: str = "", seed: int | None = None) -> None:
        if not 0.0 <= multi_share <= 1.0:
            raise ValueError(f"multi_share must be in [0, 1], got {multi_share}")
        if max_inputs < 2 and multi_share > 0:
            raise ValueError(f"max_inputs must be >= 2 when multi_share > 0, got {max_inputs}")
        if not 0.0 <= paragraph_share <= 1.0:
            raise ValueError(f"paragraph_share must be in [0, 1], got {paragraph_share}")
        if user_pool < 0:
            raise ValueError(f"user_pool must be >= 0 (0: send no user id), got {user_pool}")
        if variant not in ("", "dense", "pruned"):
            raise ValueError(f"variant must be dense, pruned or empty (routed), got {variant!r}")
        self.multi_share, self.max_inputs, self.paragraph_share = multi_share, max_inputs, paragraph_share
        self.user_pool, self.variant = user_pool, variant
        self.rng = random.Random(seed)
        self.pool = sentences()

    def text(self) -> str:
        if self.rng.random() < self.paragraph_share:
            return " ".join(self.rng.sample(self.pool, self.rng.randint(2, 5)))
        return self.rng.choice(self.pool)

    def request(self) -> tuple[dict, dict[str, str], int]:
        """(JSON body, headers, number of inputs) for one request."""
        if self.rng.random() < self.multi_share:
            n = self.rng.randint(2, self.max_inputs)
            body: dict = {"input": [self.text() for _ in range(n)]}
        else:
            n, body = 1, {"input": self.text()}
        headers: dict[str, str] = {}
        if self.user_pool:
            user = f"user-{self.rng.randrange(self.user_pool):06d}"
            body["user"] = user
            headers["X-User-Id"] = user
        if self.variant:
            headers["X-Variant"] = self.variant
        return body, headers, n
