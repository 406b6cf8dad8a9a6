"""In-context learning baselines ("hard prompts"): what prompting alone gets, so a fine-tune has a bar to beat.

k demonstrations from the training split go before the prompt as earlier chat turns (user: prompt,
assistant: reference), the way Brown et al. 2020 (https://arxiv.org/abs/2005.14165) condition GPT-3. They are
chosen either at random (seeded per example) or by retrieval: embed every pool prompt and the query prompt with
a sentence encoder (mean pooling + L2 norm), store the pool matrix, and take the k nearest by cosine similarity,
an exact search (a matrix product) since pools here are small (Liu et al. 2021,
https://arxiv.org/abs/2101.06804: nearest neighbours beat random demonstrations). The most similar
demonstration is placed last, next to the query.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

import torch


class PromptEncoder:
    """Sentence embeddings from an encoder checkpoint: masked mean of the last hidden states, L2-normalised
    (the sentence-transformers recipe for all-MiniLM-L6-v2)."""

    def __init__(self, name: str = "all-minilm-l6-v2", *, max_length: int = 256, batch_size: int = 32,
                 cache_dir: str | Path | None = None, model=None, tokenizer=None):
        from ..models import load_model, load_tokenizer

        self.name, self.max_length, self.batch_size = name, max_length, batch_size
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.model = model if model is not None else load_model(name, kind="encoder", device="cpu")
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(name)

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """(len(texts), dim) unit vectors. With a cache_dir, a list seen before is read back, not re-embedded."""
        cached = self._cache_path(texts)
        if cached is not None and cached.exists():
            return torch.load(cached)
        self.model.eval()
        device = next(self.model.parameters()).device
        parts = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start : start + self.batch_size], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            parts.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu())
        vectors = torch.cat(parts) if parts else torch.zeros(0, 0)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(".tmp")
            torch.save(vectors, tmp)
            tmp.replace(cached)
        return vectors

    def _cache_path(self, texts: list[str]) -> Path | None:
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256("\x00".join([self.name, str(self.max_length), *texts]).encode()).hexdigest()[:20]
        return self.cache_dir / f"embeddings-{digest}.pt"


class NearestNeighbours:
    """Exact cosine k-NN over a stored matrix of unit vectors (embed, store, retrieve)."""

    def __init__(self, vectors: torch.Tensor):
        self.vectors = vectors

    def search(self, queries: torch.Tensor, k: int) -> list[list[int]]:
        """Indices of the k most similar stored vectors per query, most similar first."""
        k = min(k, self.vectors.shape[0])
        scores = queries @ self.vectors.T
        return scores.topk(k, dim=1).indices.tolist()


def random_demonstrations(n_queries: int, pool_size: int, k: int, seed: int) -> list[list[int]]:
    """k distinct pool indices per query, each query with its own seeded draw (reproducible, and not one lucky
    or unlucky set shared by every example)."""
    k = min(k, pool_size)
    return [random.Random(seed * 1_000_003 + i).sample(range(pool_size), k) for i in range(n_queries)]


def retrieved_demonstrations(encoder: PromptEncoder, query_texts: list[str], pool_texts: list[str],
                             k: int) -> list[list[int]]:
    """k nearest pool indices per query, ordered so the most similar comes last (next to the query)."""
    index = NearestNeighbours(encoder.encode(pool_texts))
    return [list(reversed(hits)) for hits in index.search(encoder.encode(query_texts), k)]


def with_demonstrations(conversation: list[dict], demos: list[tuple[list[dict], str]]) -> list[dict]:
    """The conversation with each demonstration (its prompt turns, its reference) inserted as earlier turns,
    after the system message if there is one."""
    head = conversation[:1] if conversation and conversation[0]["role"] == "system" else []
    turns = []
    for demo_turns, answer in demos:
        turns += [m for m in demo_turns if m["role"] != "system"]
        turns.append({"role": "assistant", "content": answer})
    return head + turns + conversation[len(head):]
