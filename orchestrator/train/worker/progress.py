"""Where a worker's run is: the last finished step, its tokens, data cursor and data ledger."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.data.ledger import GENESIS as LEDGER_GENESIS, link as ledger_link
from orchestrator.train.checkpoint import TrainState
from orchestrator.train.worker import metrics as M


@dataclass
class Progress:
    """Where the run is: the last finished step, tokens and data cursor, and what to report."""

    step: int
    tokens: int
    cursor: dict[str, int]
    resumed_from: int | None  # reported with the first heartbeat after a (re)start, then None
    last_saved: int | None
    ledger: str  # the data ledger's value at ``step``; "" when resumed from a checkpoint without one

    @classmethod
    def from_state(cls, state: TrainState | None) -> "Progress":
        if state is None:
            return cls(0, 0, {"epoch": 0, "sample": 0}, resumed_from=0, last_saved=None, ledger=LEDGER_GENESIS)
        return cls(state.step, state.tokens_seen, state.cursor, resumed_from=state.step, last_saved=state.step,
                   ledger=state.ledger)

    def advance(self, m: M.StepMetrics, cursor: dict[str, int]) -> None:
        self.step, self.tokens, self.cursor = self.step + 1, self.tokens + m.tokens, cursor
        self.ledger = ledger_link(self.ledger, self.step, m.sample_sum) if self.ledger else ""

    def train_state(self, spec, identity, world_size: int, lr_scheduler: dict, model_config: dict) -> TrainState:
        """What a checkpoint of this point keeps (``spec``: the job's; ``identity``: the attempt's)."""
        return TrainState(
            step=self.step, tokens_seen=self.tokens, cursor=self.cursor, world_size=world_size, ledger=self.ledger,
            attempt=identity.attempt, zero_stage=spec.deepspeed.zero_stage,
            global_batch_size=spec.training.global_batch_size, job_id=identity.job_id, lr_scheduler=lr_scheduler,
            model_config=model_config, nsp=spec.data.nsp)
