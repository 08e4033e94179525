"""Lightning module of the iLoRA teacher: CE over items + lambda(t) * embedding imitation."""

from __future__ import annotations

import lightning as L
import torch

from ilora.checkpoint import load_trained, teacher_payload
from ilora.ensemble import own_and_student_scores, ranks_by_mix
from ilora.imitation import DecaySchedule, imitation_loss
from ilora.kind import KIND
from ilora.model import ILoRATeacher
from runkit.metrics import ranking_metrics
from runkit.recipe import seed_training_step
from runkit.validation import RankingValidationMixin


def lr_scheduler_config(optimizer, kind: str, warmup_ratio: float, total_steps: float) -> dict:
    """Linear warm-up over ``warmup_ratio`` of the run's optimizer steps, then cosine decay to 0
    (or constant): Lightning's optimizer+scheduler dict, stepped every optimizer step."""
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    total = max(int(total_steps), 1)
    warmup = int(warmup_ratio * total)
    scheduler = (
        get_cosine_schedule_with_warmup(optimizer, warmup, total)
        if kind == "cosine"
        else get_constant_schedule_with_warmup(optimizer, warmup)
    )
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"},
    }


class TeacherModule(RankingValidationMixin, L.LightningModule):
    checkpoint_kind = KIND.name

    def __init__(
        self,
        teacher: ILoRATeacher,
        *,
        llm_info,
        student_ref: dict,
        lr: float = 5e-4,
        weight_decay: float = 0.0,
        schedule: DecaySchedule,
        loss_type: str = "mse",
        contrastive_temperature: float = 0.1,
        seed: int = 42,
        item_table_lr_scale: float = 1.0,
        text_projector_lr_scale: float = 1.0,
        lr_schedule: str = "cosine",
        warmup_ratio: float = 0.05,
    ):
        super().__init__()
        self.teacher, self.llm_info, self.student_ref = teacher, llm_info, student_ref
        self.lr, self.weight_decay, self.seed = lr, weight_decay, seed
        self.item_table_lr_scale = item_table_lr_scale
        self.text_projector_lr_scale = text_projector_lr_scale
        self.lr_schedule, self.warmup_ratio = lr_schedule, warmup_ratio
        self.schedule, self.loss_type, self.temperature = (
            schedule,
            loss_type,
            contrastive_temperature,
        )
        self.strict_loading = False  # Lightning's last.ckpt holds only the trained tensors
        # teacher.student_mix=auto: every validation also ranks the teacher mixed with its student
        # at each weight of this grid, so w is chosen after training without another LLM pass
        # over valid; {global_step: {w: valid metrics}}, kept in last.ckpt for a resume
        self.mix_grid: tuple[float, ...] | None = None
        self.valid_by_mix: dict[int, dict[float, dict[str, float]]] = {}
        self.held_out: torch.Tensor | None = None  # the cold-item protocol's items

    def hold_out_items(self, items: torch.Tensor) -> None:
        """No ID information for these items in the teacher's item table (zero rows, held there by
        the imitation loss's reference) and no part in its training loss; text may still score
        them (teacher.text_scoring)."""
        self.held_out = items
        if self.teacher.item_table is not None:
            with torch.no_grad():
                self.teacher.item_table[items] = 0
                self.teacher.initial_item_table[items] = 0

    @property
    def num_items(self) -> int:
        return self.teacher.student.config.num_items

    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.teacher(batch["history"])

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._mix_ranks: dict[float, list[int]] = {w: [] for w in self.mix_grid or ()}

    def validation_step(self, batch, batch_idx):
        if self.mix_grid is None:
            return super().validation_step(batch, batch_idx)
        own, student = own_and_student_scores(self.teacher, batch["history"])
        self.record_valid_scores(own, batch)  # model selection: the teacher alone
        exclude = self.valid_exclude(batch, own.device)
        for w, ranks in ranks_by_mix(own, student, batch["target"], exclude, self.mix_grid).items():
            self._mix_ranks[w] += ranks.tolist()

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self.mix_grid is None or not any(self._mix_ranks.values()):
            return
        gathered = {
            w: self.all_gather(torch.tensor(r, device=self.device)).reshape(-1).cpu()
            for w, r in self._mix_ranks.items()
        }
        self.valid_by_mix[int(self.global_step)] = {
            w: ranking_metrics(ranks, self.eval_ks) for w, ranks in gathered.items()
        }

    def on_fit_start(self) -> None:
        # null teacher.imitation_decay_steps = the run's real number of optimizer steps
        self.schedule = self.schedule.resolve(self.trainer.estimated_stepping_batches)

    def on_train_start(self) -> None:
        # The LLM arrives in eval mode and Lightning keeps modules' modes as it finds them: put
        # the teacher in training mode so LoRA dropout acts (the frozen student stays in eval).
        self.teacher.train()

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        seed_training_step(self.seed, self.current_epoch, batch_idx)

    def training_step(self, batch, batch_idx):
        ce, targets = self.teacher.training_loss(batch, exclude=self.held_out)
        lam = self.schedule(self.global_step + 1)  # after this step: min is reached on the last one
        loss = ce
        if self.teacher.item_table is not None and lam > 0:
            rows = torch.cat([batch["history"].flatten(), targets])
            imitation = imitation_loss(
                self.teacher.item_table,
                self.teacher.initial_item_table,
                self.loss_type,
                temperature=self.temperature,
                rows=rows,
            )
            loss = ce + lam * imitation
            self.log("train/imitation", imitation, batch_size=len(targets))
        self.log_dict({"train/ce": ce, "train/lambda": lam}, batch_size=len(targets))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(targets))
        return loss

    def configure_optimizers(self):
        # The item vectors get their own learning rates. Adam moves every item-table row each step
        # (the softmax gradient touches all items), so on a short run the table drifts away from
        # the student's on a few hundred prompts (scale 0 keeps it as it is). The text projector
        # starts at zero beside rows of the student's norm: at the common lr a short run leaves
        # the text part a small fraction of an item's vector, so it may learn faster.
        table, text = self.teacher.item_table, self.teacher.text_projector
        own = {  # name (TensorBoard's lr/<name> curve): (parameters, lr scale)
            "item_table": ([] if table is None else [table], self.item_table_lr_scale),
            "text_projector": (
                [] if text is None else list(text.parameters()),
                self.text_projector_lr_scale,
            ),
        }
        held = {id(p) for params, _ in own.values() for p in params}
        others = [p for p in self.teacher.parameters() if p.requires_grad and id(p) not in held]
        groups = [{"params": others, "name": "teacher"}]
        groups += [
            {"params": params, "lr": self.lr * scale, "name": name}
            for name, (params, scale) in own.items()
            if params and scale > 0
        ]
        optimizer = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay)
        return lr_scheduler_config(
            optimizer, self.lr_schedule, self.warmup_ratio, self.trainer.estimated_stepping_batches
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Keep last.ckpt small: the frozen LLM and student are rebuilt from their sources.
        trained = {f"teacher.{k}" for k in self.teacher.checkpoint_tensors()}
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if k in trained
        }
        checkpoint["valid_by_mix"] = self.valid_by_mix

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.valid_by_mix = dict(checkpoint.get("valid_by_mix", {}))

    # -- checkpoint contract --------------------------------------------------------------
    def checkpoint_payload(self) -> dict:
        return teacher_payload(self.teacher, self.llm_info, self.student_ref)

    def load_payload(self, tensors: dict[str, torch.Tensor]) -> None:
        load_trained(self.teacher, tensors, "checkpoints/best")
