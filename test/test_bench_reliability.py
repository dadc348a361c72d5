"""``m2vae-fusion bench reliability``: argument errors, the accuracy it reads from a monitor's record, its targets.
The benchmark itself (live processes, minutes) is run by hand: ``m2vae-fusion bench reliability --quick``."""
import subprocess
import sys

import pytest

from m2vae_fusion.benchmarks import reliability as rel

NAMES = ["a", "b", "c"]


@pytest.mark.parametrize("args,text", [(["--skip", "bogus"], "--skip"), (["--stops", "0"], "--stops"),
                                       (["--loss-percent", "100"], "--loss-percent"),
                                       (["--soak-minutes", "0"], "--soak-minutes")])
def test_bad_arguments_exit_2(args, text):
    res = subprocess.run([sys.executable, "-m", "m2vae_fusion", "bench", "reliability", *args], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert text in res.stderr and "Traceback" not in res.stderr


def test_accuracy_uses_each_agents_last_belief_per_object():
    mon = {"truth": {"o1": "a", "o2": "b"},
           "beliefs": [[1.0, "x", "o1", [0.1, 0.8, 0.1], ["x"]],    # wrong first …
                       [2.0, "x", "o1", [0.7, 0.2, 0.1], ["x"]],    # … right last
                       [3.0, "x", "o2", [0.1, 0.2, 0.7], ["x"]],    # wrong
                       [1.5, "y", "o2", [0.2, 0.7, 0.1], ["y"]]]}   # right; y has no belief about o1
    assert rel.accuracy(mon, ["x", "y"], NAMES) == {"x": 0.5, "y": 0.5}
    assert rel.accuracy(mon, ["x"], NAMES, until=1.2) == {"x": 0.0}
    assert rel.accuracy(mon, ["x"], NAMES, targets=["o1"]) == {"x": 1.0}


def test_targets_and_report_from_a_result():
    res = {"quick": False,
           "fuzz": {"sent": 10500, "dropped_extra": {"a": 3},
                    "without_fuzz": {"mean_accuracy": 1.0, "accuracy": {"a": 1.0}, "crashed": [], "corrupt_outputs": 0,
                                     "internal_errors": 0, "dropped": {"a": {}}, "fuzzer": None},
                    "with_fuzz": {"mean_accuracy": 0.9, "accuracy": {"a": 0.9}, "crashed": [], "corrupt_outputs": 2,
                                  "internal_errors": 0, "dropped": {"a": {"dropped.camera.empty": 3}},
                                  "fuzzer": {"sent": 10500, "by_source": {"camera": 10500}}}},
           "stops": {"n": 4, "exit_0": 3, "tracebacks": 1, "summary": {
               "demo/SIGINT": {"n": 4, "exit_0": 3, "exit_codes": {"0": 3, "1": 1}, "tracebacks": 1, "not_ready": 0,
                               "stop_s_max": 2.0}}}}
    rows = {t["name"]: t for t in rel.targets_of(res)}
    assert rows["fuzz: hostile messages sent"]["pass"] is True
    assert rows["fuzz: corrupt outputs"]["pass"] is False
    assert rows["fuzz: |accuracy with - without| (points)"]["value"] == pytest.approx(10.0)
    assert rows["stops: exit status 0"]["pass"] is False and rows["stops: tracebacks"]["pass"] is False
    res["targets"] = rel.targets_of(res)
    text = rel.format_report(res)
    assert "with fuzz" in text and "demo/SIGINT" in text and "MISS" in text
