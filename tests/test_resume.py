"""Per-batch storage of a trial in progress: a re-run serves stored batches, computes the rest."""

from typing import ClassVar

import numpy as np

from aipray.pipeline.actor import BatchFolder, ResumableBatches, partial_folder


class Doubler:
    """A stand-in for a ranker actor: counts its constructions and calls."""

    built = 0
    calls: ClassVar[list[list[int]]] = []

    def __init__(self, factor: int) -> None:
        Doubler.built += 1
        self.factor = factor

    def __call__(self, batch):
        ids = np.asarray(batch["item_id"])
        Doubler.calls.append(ids.tolist())
        return {
            "item_id": ids,
            "score": ids.astype(np.float64) * self.factor,
            "hit": ids % 2 == 0,
            "adv": np.array([bytes([i % 256]) * 3 for i in ids], dtype=object),
        }


def batches(n, step):
    ids = np.arange(n, dtype=np.int64) * 7
    return [{"item_id": ids[i : i + step]} for i in range(0, n, step)]


def test_a_rerun_serves_stored_batches_and_computes_only_the_rest(tmp_path):
    Doubler.built, Doubler.calls = 0, []
    folder = partial_folder(tmp_path / "results" / "trial-abc")
    assert folder == tmp_path / "results" / ".partial-trial-abc"
    first = ResumableBatches(Doubler, str(folder), factor=2)
    work = batches(10, 4)  # three batches: 4 + 4 + 2
    done = [first(b) for b in work[:2]]  # the trial dies after two batches
    assert len(BatchFolder(folder)) == 2 and Doubler.built == 1

    again = ResumableBatches(Doubler, str(folder), factor=2)
    Doubler.calls = []
    redone = [again(b) for b in work]
    assert Doubler.calls == [work[2]["item_id"].tolist()]  # only the missing batch ran
    assert [r["resumed"].tolist() for r in redone] == [[True] * 4, [True] * 4, [False] * 2]
    for before, after in zip(done, redone[:2], strict=True):
        for key in ("item_id", "score", "hit", "adv"):
            assert after[key].tolist() == before[key].tolist()
    assert redone[0]["score"].dtype == np.float64 and redone[0]["hit"].dtype == bool

    # every batch stored: the wrapped actor (a model load) is never even built
    Doubler.built = 0
    third = ResumableBatches(Doubler, str(folder), factor=2)
    assert all(third(b)["resumed"].all() for b in work) and Doubler.built == 0
    BatchFolder(folder).clear()
    assert not folder.exists() and len(BatchFolder(folder)) == 0


def test_a_batch_of_other_items_is_not_taken_for_a_stored_one(tmp_path):
    folder = BatchFolder(tmp_path / "p")
    out = {"item_id": np.array([1, 2]), "score": np.array([0.5, 0.25])}
    folder.save(np.array([1, 2]), out)
    assert folder.load(np.array([2, 1])) is None and folder.load(np.array([1])) is None
    assert folder.load(np.array([1, 2]))["score"].tolist() == [0.5, 0.25]
    assert not list((tmp_path / "p").glob(".tmp-*"))  # written under a temporary name, renamed
