"""`text.mode = "lora"`: the language model is tuned jointly with the recommender.

LoRA adapters (peft) sit on the attention projections (query, value) of the LM. At every
training step the texts of the batch's target items are re-encoded *with gradients*, so
L_RS flows into the adapters; the other items use their last computed embedding (a cache
refreshed as items come up in batches). L_LM is the masked-LM loss on the same texts
(BERT's MLM head; all-MiniLM-L6-v2 ships no MLM head weights, so the head's transform layer
starts from random and is trained along). After training, the whole catalog is re-encoded
with the tuned LM; the adapter is saved in the bundle (``text_adapter.safetensors``) so the
indexer and the service encode new items with the same tuned LM.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from model_store.config import TextConfig
from model_store.text.lm import load_masked_lm, load_tokenizer, mean_pool

ADAPTER_FILE = "text_adapter.safetensors"
ADAPTER_CONFIG = "text_adapter.json"
TARGET_MODULES = ["query", "value"]


def lora_config(r: int, alpha: int, dropout: float) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=TARGET_MODULES, bias="none"
    )


class LoraText(nn.Module):
    """A LoRA-tuned LM over a fixed list of item texts (item index k ↔ texts[k - 1])."""

    def __init__(self, cfg: TextConfig, texts: list[str], device: torch.device) -> None:
        super().__init__()
        from peft import get_peft_model

        self.cfg = cfg
        self.tokenizer = load_tokenizer(cfg.model)
        self.peft = get_peft_model(
            load_masked_lm(cfg.model), lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
        )
        # the MLM head's transform is trained too (it starts untrained)
        for name, p in self.peft.named_parameters():
            if ".cls." in name and "decoder" not in name:
                p.requires_grad_(True)
        self.texts = texts
        self.device_ = device
        self.to(device)

    def _encoder(self) -> Any:
        return self.peft.base_model.model.bert

    def _batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        texts = [self.texts[int(i) - 1] for i in idx.tolist()]
        enc = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.cfg.max_length,
            return_tensors="pt",
        )
        return {k: v.to(self.device_) for k, v in enc.items()}

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """Normalised mean-pooled embeddings of items ``idx`` (M,) → (M, T), with gradients."""
        batch = self._batch(idx)
        out = self._encoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return nn.functional.normalize(
            mean_pool(out.last_hidden_state, batch["attention_mask"]), dim=-1
        )

    def mlm_loss(self, idx: torch.Tensor) -> torch.Tensor:
        batch = self._batch(idx)
        ids = batch["input_ids"].clone()
        labels = ids.clone()
        special = (
            (ids == self.tokenizer.cls_token_id)
            | (ids == self.tokenizer.sep_token_id)
            | (batch["attention_mask"] == 0)
        )
        prob = torch.full(ids.shape, self.cfg.mlm_probability, device=ids.device)
        masked = torch.bernoulli(prob).bool() & ~special
        if not bool(masked.any()):
            masked[0, 1] = True
        labels[~masked] = -100
        ids[masked] = int(self.tokenizer.mask_token_id)
        result = self.peft(input_ids=ids, attention_mask=batch["attention_mask"], labels=labels)
        loss: torch.Tensor = result.loss
        return loss

    @torch.inference_mode()
    def encode_all(self, batch_size: int = 128) -> np.ndarray:
        was = self.training
        self.eval()
        n = len(self.texts)
        out = np.zeros((n, int(self._encoder().config.hidden_size)), dtype=np.float32)
        order = np.argsort([-len(t) for t in self.texts], kind="stable")
        for s in range(0, n, batch_size):
            sel = order[s : s + batch_size]
            out[sel] = self.embed(torch.as_tensor(sel + 1)).float().cpu().numpy()
        self.train(was)
        return out

    def save(self, directory: Path) -> None:
        from peft import get_peft_model_state_dict

        state = {
            k: v.detach().contiguous().cpu()
            for k, v in get_peft_model_state_dict(self.peft).items()
        }
        head = {
            f"head::{k}": v.detach().contiguous().cpu()
            for k, v in self.peft.base_model.model.cls.state_dict().items()
            if "decoder" not in k
        }
        save_file({**state, **head}, str(directory / ADAPTER_FILE))
        (directory / ADAPTER_CONFIG).write_text(
            json.dumps(
                {
                    "r": self.cfg.lora_r,
                    "lora_alpha": self.cfg.lora_alpha,
                    "lora_dropout": self.cfg.lora_dropout,
                    "target_modules": TARGET_MODULES,
                }
            )
        )


def load_tuned_encoder(model: str, bundle_dir: Path) -> Any:
    """The LM with the bundle's LoRA adapter merged in (a plain transformers BertModel)."""
    from peft import get_peft_model, set_peft_model_state_dict

    saved = json.loads((bundle_dir / ADAPTER_CONFIG).read_text())
    config = lora_config(saved["r"], saved["lora_alpha"], saved["lora_dropout"])
    peft = get_peft_model(load_masked_lm(model), config)
    state = load_file(str(bundle_dir / ADAPTER_FILE))
    set_peft_model_state_dict(peft, {k: v for k, v in state.items() if not k.startswith("head::")})
    merged = peft.merge_and_unload()
    return merged.bert
