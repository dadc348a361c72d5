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


def test_loss_layout_tours_both_agents_over_the_same_objects_together():
    """The peer-evidence age is about the target both agents observe: each namespace's world has one agent, so both
    start at the first object and tour in the same order; agent1 listens to the shadow world's agent."""
    ctx = {"objects": ["x", "y"], "world": "easy", "seed": 3, "loss_domain": 170}
    lay = rel.netns_layout(ctx)
    assert [s["params"]["num_agents"] for s in lay["sims"]] == [1, 1]
    assert [s["params"]["seed"] for s in lay["sims"]] == [3, 3]
    assert lay["sims"][1]["params"]["agent_prefix"] == "shadow"
    assert lay["agents"]["agent1"]["topics"]["lidar_topic"] == "/shadow0/scan"
    assert [s["prefix"][-1] for s in lay["sims"]] == list(rel.NS)


def test_loss_report_over_seeds():
    runs = [{"seed": s, "loss_percent": lp, "mean_accuracy": acc, "arrival_age_s": {"p50": 0.03, "p99": 0.1},
             "evidence_age_s": {"p99": age}, "peer_latents_received": 100, "nft_dropped_packets": {"a": 5}}
            for s, (lp, acc, age) in enumerate([(0.0, 1.0, 0.2), (0.0, 1.0, 0.3), (20.0, 1.0, 0.4), (20.0, 0.9, 0.6)])]
    summ = {"0": {"mean_accuracy": 1.0, "accuracy_ci95": 0.0, "evidence_age_p99_s_mean": 0.25,
                  "evidence_age_p99_s_ci95": 0.6, "evidence_age_p99_s_max": 0.3, "seeds": 2},
            "20": {"mean_accuracy": 0.95, "accuracy_ci95": 0.64, "evidence_age_p99_s_mean": 0.5,
                   "evidence_age_p99_s_ci95": 1.3, "evidence_age_p99_s_max": 0.6, "seeds": 2}}
    res = {"loss": {"runs": runs, "summary": summ}}
    rows = {t["name"]: t for t in rel.targets_of(res)}
    assert rows["loss 20 %: accuracy drop (points)"]["value"] == pytest.approx(5.0)
    assert rows["loss 20 %: accuracy drop (points)"]["pass"] is False
    assert rows["loss 20 %: peer-evidence age p99"]["pass"] is False  # the worst seed counts
    text = rel.format_report({**res, "targets": rel.targets_of(res)})
    assert "Loss: over seeds" in text and "0.950 ± 0.640" in text
