"""scripts/attack_bench.py runs every ranker's real attacks and the cold-item evaluation on a
small world, and its images/s follow from its own time per step and the whole attack's steps."""

import re

SMALL = (
    "--users 600 --items 500 --image-size 32 --batch 3 --expa-steps 2 --expa-early 100"
    " --cold 10 --candidates 50 --eval-batch 4 --device cpu"
)


def test_attack_bench_prints_every_ranker_and_consistent_rates(run_script):
    out = run_script("attack_bench.py", *SMALL.split())
    rows = {
        (m[1], m[2]): [float(v) for v in m.group(3, 4, 5, 6, 7)]
        for m in re.finditer(
            r"^(\w+)\s+(INSA|EXPA [\d,]+ steps)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)x$",
            out,
            re.M,
        )
    }
    # EXPA on VBPR makes AlexRank's images (one feature network): not attacked twice
    assert set(rows) == {
        ("alexrank", "INSA"),
        ("alexrank", "EXPA 5,000 steps"),
        ("alexrank", "EXPA 100 steps"),
        ("vbpr", "INSA"),
        ("dvbpr", "INSA"),
        ("dvbpr", "EXPA 5,000 steps"),
        ("dvbpr", "EXPA 100 steps"),
    }
    whole = {"INSA": 10 * 2, "EXPA 5,000 steps": 5000, "EXPA 100 steps": 100}  # 600 users / 512
    for (_, attack), (step_one, step_many, rate_one, rate_many, ratio) in rows.items():
        n = whole[attack]  # printed to 4 significant digits (the ratio to 3)
        assert abs(rate_one - 1 / (step_one * n)) <= 0.002 * rate_one
        assert abs(rate_many - 3 / (step_many * n)) <= 0.002 * rate_many
        assert abs(ratio - rate_many / rate_one) <= 0.01 * ratio
    for name in ("alexrank", "vbpr", "dvbpr"):
        assert re.search(rf"^  {name}\s+\S+ s in all, of which ranking", out, re.M)
    assert "10 items x 600 users x 52 candidates" in out
