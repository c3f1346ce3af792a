"""scripts/grid_cost.py counts the grid's image passes as the store shares them (hand-counted
on the quick sweep) and converts FLOPs to hours."""

import re


def test_quick_sweep_work_is_counted_after_sharing(run_script):
    out = run_script("grid_cost.py", "sweeps/quick.yaml", "--assume-tflops", "1")
    rows = {
        (m[1], m[2]): (float(m[3].replace(",", "")), float(m[4]), float(m[5]))
        for m in re.finditer(
            r"^(\S+)\s+32\s+(attack|forward|train)\s+([\d,]+)\s+(\S+)\s+\S+\s+(\S+)$", out, re.M
        )
    }
    # 1,200 users, 1,200 items, ~12,000 interactions, 120 cold items; INSA 10 epochs x 10 user
    # batches, EXPA 100 steps; ε 8 and 32 each; trials under none and JPEG 75 share one attack
    insa, expa = 2 * 120 * 10 * 10, 2 * 120 * 100
    assert rows["dvbpr(dim=20)", "attack"][0] == insa + expa
    assert rows["extractor", "attack"][0] == insa + expa  # VBPR's INSA and EXPA through Φ
    # at most 20 epochs (DVBPR stops earlier once validation stalls): a positive and a negative
    assert rows["dvbpr(dim=20)", "train"][0] == 20 * 12_000 * 2
    # the extractor pretrains on the surrogate set: 192 classes x 20 images, 30 epochs
    assert rows["extractor", "train"][0] == 192 * 20 * 30
    # per trial 2 x 120 images (3 x 120 defended); per context every item once; the features
    trials = 2 * (2 * 2 * 120) + 2 * (3 * 2 * 120)
    assert rows["dvbpr(dim=20)", "forward"][0] == trials + 2 * 1200
    assert rows["extractor", "forward"][0] == trials + 2 * 1200 + 1200
    # hours = images x FLOPs per image / 1 TFLOP/s
    for images, gflop, hours in rows.values():
        assert abs(hours - images * gflop * 1e9 / 1e12 / 3600) < 0.01 + 0.02 * hours
    assert rows["extractor", "attack"][1] > rows["extractor", "forward"][1]
    assert "16 trials" in out and "on 8" in out
