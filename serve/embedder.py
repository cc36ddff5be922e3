"""The embedder as a Ray Serve deployment, batched with ``@serve.batch``.

One model in memory per replica instead of one per host and gateway; concurrent callers (every
bot turn's query, every upload's passages) share forward passes: 32 texts in one pass cost
~0.14 s against ~1.07 s one by one on the dev machine (docs/benchmarks.md, "ChatAI").
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from ray import serve
from ray.serve import Application

from actors.bot_embedding import SentenceEmbedder, embedder_deployment_name
from warbler.config import Settings


class Embedder:
    """One replica: the model, a batched entry point and an unbatched one (for the benchmark)."""

    def __init__(self, max_batch: int, wait_s: float) -> None:
        self._model = SentenceEmbedder()
        batched: Any = self._embed_batched  # serve.batch adds these setters at runtime
        batched.set_max_batch_size(max_batch)
        batched.set_batch_wait_timeout_s(wait_s)
        self.batches: list[int] = []

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _embed_batched(self, texts: list[str]) -> list[Any]:
        self.batches.append(len(texts))
        del self.batches[:-1000]
        vectors = await asyncio.to_thread(self._model.embed, texts)
        return list(vectors)

    async def embed(self, texts: list[str]) -> Any:
        """Unit vectors for ``texts``; each text joins the replica's next batch."""
        rows = await asyncio.gather(*(self._embed_batched(t) for t in texts))
        return np.vstack(rows) if rows else np.zeros((0, 384), dtype=np.float32)

    async def embed_unbatched(self, texts: list[str]) -> Any:
        """The same, one forward pass per call (the benchmark's baseline)."""
        return await asyncio.to_thread(self._model.embed, texts)

    def stats(self) -> dict[str, Any]:
        """Recent batch sizes (for the benchmark)."""
        sizes = self.batches or [0]
        return {"batches": len(self.batches), "mean_batch": sum(sizes) / len(sizes)}


def embedder_app(settings: Settings) -> Application:
    """The bound deployment, to put beside the gateway in ``build_app``."""
    deployment = serve.deployment(
        name=embedder_deployment_name(settings.namespace),
        num_replicas=settings.embedder_replicas,
        # CPU 0: a forward pass is short and the gateway's replicas must still fit a laptop.
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=256,
    )(Embedder)
    return deployment.bind(settings.embedder_max_batch, settings.embedder_batch_wait_s)
