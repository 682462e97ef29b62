"""In-domain MAUVE / Fréchet features: the final hidden states of one of our `objective=ar` checkpoints (the
role gpt2-large plays for OpenWebText), for data no off-the-shelf encoder knows (characters, HMM symbols)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

POOLINGS = ("mean", "last")


class ARFeaturizer:
    """Texts are encoded with the checkpoint's own tokenizer behind a BOS, cut to its sequence length and run
    through the causal model; the features are the last block's output (the output layer's input), averaged
    over the text's positions (`ar`) or taken at its last token (`ar-last`)."""

    def __init__(self, checkpoint: str, pooling: str = "mean", weights: str = "auto", batch_size: int = 32):
        from dsl_scale.checkpoint.inference import load_for_inference
        from dsl_scale.parallel.topology import init_process_groups

        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r} is not one of {POOLINGS}")
        if not checkpoint:
            raise ValueError("featurizer=ar needs featurizer_path=AR_RUN_DIR (an objective=ar checkpoint)")
        init_process_groups(1, 1)
        self.loaded = load_for_inference(checkpoint, weights, precision="fp32")
        if self.loaded.train_config.objective.name != "ar":
            raise ValueError(f"featurizer_path={checkpoint} was trained with objective="
                             f"{self.loaded.train_config.objective.name}; the AR featurizer needs objective=ar")
        self.checkpoint, self.pooling, self.batch_size = checkpoint, pooling, batch_size
        self.tokenizer = self.loaded.tokenizer
        self.context = self.loaded.train_config.model.seq_len
        self._hidden: list[torch.Tensor] = []
        self.loaded.model.output_layer.register_forward_hook(lambda _m, args, _out: self._hidden.append(args[0]))

    def identity(self) -> dict[str, Any]:
        return {"name": "ar" if self.pooling == "mean" else "ar-last", "model": str(self.loaded.checkpoint_dir),
                "weights": self.loaded.weights, "tokenizer": self.tokenizer.name, "context": self.context,
                "feature": f"last block output, {self.pooling}-pooled over [BOS] + text"}

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> np.ndarray:
        rows = []
        device = self.loaded.device
        for start in range(0, len(texts), self.batch_size):
            encoded = [[self.tokenizer.bos_id, *self.tokenizer.encode(t)][: self.context]
                       for t in texts[start:start + self.batch_size]]
            width = max(len(e) for e in encoded)
            ids = torch.full((len(encoded), width), self.tokenizer.eos_id, dtype=torch.long, device=device)
            mask = torch.zeros(len(encoded), width, dtype=torch.bool, device=device)
            for j, e in enumerate(encoded):
                ids[j, :len(e)] = torch.tensor(e, device=device)
                mask[j, :len(e)] = True
            self._hidden.clear()
            self.loaded.model(ids)  # causal: the right padding never reaches a real position
            hidden = self._hidden[-1].float()  # [b, s, H]
            if self.pooling == "mean":
                pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            else:
                pooled = hidden[torch.arange(len(encoded), device=device), mask.sum(1) - 1]
            rows.append(pooled.cpu().numpy())
        return np.concatenate(rows)
