"""Colluding merchants in a sweep trial (``collusion: [k, ...]``), in this process (no Ray): the
trial scores its stored adversarial images again in groups of k, and the result is a trial of its
own while the attack's images are shared."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.test_reevaluate import WORLD, _run_all


def test_a_trial_reports_its_colluding_merchants(tmp_path, one_thread):
    store = tmp_path / "store"
    raw = {**WORLD, "name": "alone", "attacks": {"insa": {"eps": [16], "epochs": 2}}}
    alone = _run_all(raw, store)
    together = _run_all({**raw, "name": "together", "collusion": [2, 3]}, store)
    for defense, (plan, metrics) in together.items():
        before_plan, before = alone[defense]
        assert plan.paths.attack == before_plan.paths.attack  # the same images, not re-attacked
        assert plan.paths.result != before_plan.paths.result  # a result of its own
        assert not any(k.startswith("collusion/") for k in before)
        rows = pd.read_parquet(plan.paths.result / "items.parquet").sort_values("item_id")
        for k in (2, 3):
            groups = 10 // k
            assert metrics[f"collusion/k{k}/groups"] == groups
            # each colluder alone, scored again from the stored image, is its own row
            mean = rows["adversarial/hr_at_5"].to_numpy()[: groups * k].mean()
            assert metrics[f"collusion/k{k}/alone/hr_at_5"] == pytest.approx(mean, abs=1e-6)
            assert (
                metrics[f"collusion/k{k}/adversarial/hr_at_5"]
                <= metrics[f"collusion/k{k}/alone/hr_at_5"]
            )
        assert plan.params["collusion"] == "2,3"
