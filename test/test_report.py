"""Demo figures from recorded events: accuracy, time to correct, tables, JSON and PNG."""
import json

import numpy as np

from m2vae_fusion.files import write_json
from m2vae_fusion.report import BeliefEvent, LatentEvent, RunRecord, format_tables, plot, summarise

NAMES = ["a", "b", "c"]


def onehot(k, p=0.8):
    v = np.full(3, (1 - p) / 2)
    v[k] = p
    return v


def record():
    rec = RunRecord(NAMES, ["cam", "lid"], {"t0": "a", "t1": "c"})
    rec.beliefs += [BeliefEvent(1.0, "cam", "t0", onehot(1), ("camera",)),
                    BeliefEvent(2.0, "cam", "t0", onehot(0), ("camera", "lidar"), ("cam", "lid")),
                    BeliefEvent(3.0, "cam", "t0", onehot(1)),      # wrong again …
                    BeliefEvent(4.0, "cam", "t0", onehot(0)),      # … and right from 4.0 on
                    BeliefEvent(1.5, "lid", "t0", onehot(2)),
                    BeliefEvent(5.0, "cam", "t1", onehot(2))]
    rec.first_observation[("cam", "t0")] = 0.5
    rng = np.random.default_rng(0)
    rec.latents += [LatentEvent(float(i), "cam", "t0", rng.normal(size=4)) for i in range(4)]
    rec.meta["exchange"] = False
    return rec


def test_summary_figures():
    s = summarise(record())
    assert s["targets"]["t0"]["agents"]["cam"]["top_class"] == "a" and s["targets"]["t0"]["agents"]["cam"]["correct"]
    assert not s["targets"]["t0"]["agents"]["lid"]["correct"]
    assert s["targets"]["t1"]["agents"]["lid"]["top_class"] is None
    assert s["agents"]["cam"]["accuracy"] == 1.0 and s["agents"]["lid"]["accuracy"] == 0.0
    # t0: correct for good from 4.0, first observation 0.5 → 3.5 s; t1: first belief 5.0, correct at once → 0
    assert s["agents"]["cam"]["time_to_correct_per_target"] == {"t0": 3.5, "t1": 0.0}
    assert s["agents"]["cam"]["time_to_correct_s"] == 1.75 and s["agents"]["lid"]["time_to_correct_s"] is None
    assert s["exchange"] is False
    # t0: right with camera + lidar at 2.0 (all the run's modalities), wrong at 3.0: one flip of a complete belief
    assert s["agents"]["cam"]["flips_after_correct"] == 1
    assert s["agents"]["cam"]["flips_after_complete_correct"] == 1 and s["agents"]["cam"]["flipped_targets"] == ["t0"]
    assert s["agents"]["lid"]["flips_after_correct"] == 0
    # how the belief developed: the first belief and each change of its top class
    assert s["targets"]["t0"]["agents"]["cam"]["top_class_changes"] == [
        [1.0, "b", "camera"], [2.0, "a", "camera+lidar"], [3.0, "b", ""], [4.0, "a", ""]]
    assert s["targets"]["t0"]["agents"]["lid"]["top_class_changes"] == [[1.5, "c", ""]]


def test_a_one_sensor_belief_right_by_chance_is_not_a_flip():
    rec = RunRecord(NAMES, ["cam"], {"t0": "a"})
    rec.beliefs += [BeliefEvent(1.0, "cam", "t0", onehot(0), ("camera",)),            # right by chance, camera only
                    BeliefEvent(2.0, "cam", "t0", onehot(1), ("camera", "lidar")),   # the lidar evidence changes it
                    BeliefEvent(3.0, "cam", "t0", onehot(0), ("camera", "lidar"))]
    s = summarise(rec)["agents"]["cam"]
    assert s["flips_after_correct"] == 1 and s["flips_after_complete_correct"] == 0 and s["flipped_targets"] == []


def test_tables_json_png(tmp_path):
    rec = record()
    s = summarise(rec)
    text = format_tables(s)
    assert "t0" in text and "100.0%" in text and "(no belief)" in text
    write_json(str(tmp_path / "r.json"), s)
    assert json.loads((tmp_path / "r.json").read_text())["agents"]["lid"]["accuracy"] == 0.0
    plot(rec, str(tmp_path / "r.png"), "test")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
