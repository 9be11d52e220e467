"""Training plumbing shared by reference training and surgery: logging and devices."""

from __future__ import annotations

import logging

from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)

# Lightning gives its loggers their own stderr handler; with the root logger
# also writing to the rule's log every line would appear twice.
for _name in ("lightning.pytorch", "lightning.fabric"):
    logging.getLogger(_name).handlers.clear()
    logging.getLogger(_name).propagate = True


class EpochLogger(Callback):
    """Log each epoch's losses to the rule's log (progress bars are off: logs stay readable)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        metrics = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.endswith(("_train", "_validation")) and getattr(v, "numel", lambda: 1)() == 1
        }
        shown = ", ".join(
            f"{k} {v:.4g}" for k, v in sorted(metrics.items()) if "loss" in k or "elbo" in k
        )
        log.info(
            "%s epoch %d/%d: %s", self.name, trainer.current_epoch + 1, trainer.max_epochs, shown
        )


def train_kwargs(accelerator: str = "auto") -> dict:
    """Trainer settings: GPU when one is visible (accelerator "auto"), no progress bar."""
    return {"accelerator": accelerator, "enable_progress_bar": False}
