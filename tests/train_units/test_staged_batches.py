"""``inputs.StagedBatches``: the worker's next batch is read and copied ahead, one batch at most,
and the batches come out in the stream's order with their micro-batches converted. (That a staged
batch dropped by a stopping attempt loses no sample is the exact-resume and chaos tests' check:
their resumed runs train the uninterrupted run's sample ids, none twice.)"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.train.worker.inputs import StagedBatches


@dataclass
class Batch:
    number: int
    micro_batches: list


class CountingStream:
    """An endless stream of batches of two micro-batches that counts what it handed out."""

    def __init__(self):
        self.read = 0

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        self.read += 1
        return Batch(self.read, [{"micro": (self.read, 0)}, {"micro": (self.read, 1)}])


def test_batches_come_in_order_with_their_inputs_converted():
    stream = CountingStream()
    staged = StagedBatches(stream, lambda micro: ("on-device", micro["micro"]))
    batch, inputs = staged.take()  # nothing staged: read now
    assert batch.number == 1 and inputs == [("on-device", (1, 0)), ("on-device", (1, 1))]
    staged.stage_next()
    assert stream.read == 2  # read ahead, before it is taken
    staged.stage_next()  # already staged: no further read
    assert stream.read == 2
    batch, inputs = staged.take()
    assert batch.number == 2 and inputs[1] == ("on-device", (2, 1))
    assert [staged.take()[0].number for _ in range(3)] == [3, 4, 5]
    assert stream.read == 5

