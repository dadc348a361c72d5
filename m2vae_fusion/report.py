"""Results of a multi-agent fusion run (the demo): per-target and per-agent figures, tables and a PNG (the summary is
written as JSON by :func:`m2vae_fusion.files.write_json`).

Pure functions over recorded events, no ROS: the demo records what the agents publish and hands it here, so the
analysis is unit-testable. Times are seconds since the start of the run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np


@dataclass
class BeliefEvent:
    """One published ``ClassBelief``: time ``t`` (s since start), ``agent``, ``target``, class ``probabilities``
    (float, C) in ``class_names`` order, ``modalities`` and ``contributors`` of the belief."""

    t: float
    agent: str
    target: str
    probabilities: np.ndarray
    modalities: tuple = ()
    contributors: tuple = ()


@dataclass
class LatentEvent:
    """One published ``LatentEmbedding`` on an agent's own ``latent`` topic: latent ``mean`` (float, Dz)."""

    t: float
    agent: str
    target: str
    mean: np.ndarray
    modalities: tuple = ()


@dataclass
class RunRecord:
    """Everything a run recorded. ``truth``: target id → true class name; ``first_observation``: (agent, target) →
    time of the agent's first own observation of the target (its first belief when not known)."""

    class_names: Sequence[str]
    agents: Sequence[str]
    truth: Mapping[str, str]
    beliefs: list = field(default_factory=list)
    latents: list = field(default_factory=list)
    first_observation: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


def summarise(rec: RunRecord) -> dict:
    """The run's figures as a JSON-ready dict.

    Returns:
        ``{"targets": {target: {"true_class", "agents": {agent: {"top_class", "probability", "modalities",
        "contributors", "correct", "top_class_changes"}}}}, "agents": {agent: {"accuracy", "time_to_correct_s", "time_to_correct_per_target",
        "targets_with_belief", "flips_after_correct", "flips_after_complete_correct", "flipped_targets"}},
        "exchange": bool, ...meta}``. ``accuracy`` counts a target without any belief as wrong;
        ``time_to_correct_s`` is the median over targets that became correct of (first time the top class is the
        true class and stays so until the end) − (the agent's first observation of the target), or None.
        ``flips_after_correct``: how often a published belief's top class went from the true class to another one
        (all targets); ``flips_after_complete_correct``: the same, counted only once the belief held every modality
        any belief of the run held (a belief that was right with all the evidence and then turned wrong: what a
        user calls a flipped belief; a one-sensor belief that is right by chance and changes when the other sensors'
        evidence arrives is not one); ``flipped_targets``: the targets with such a complete-evidence flip;
        ``top_class_changes``: ``[t, top class, modalities]`` for the first published belief and each change of its top
        class (how a belief developed, e.g. which evidence turned it).
    """
    names = list(rec.class_names)
    last: dict = {}
    series: dict = {}
    for ev in sorted(rec.beliefs, key=lambda e: e.t):
        last[(ev.agent, ev.target)] = ev
        series.setdefault((ev.agent, ev.target), []).append(ev)
    complete = set()
    for ev in rec.beliefs:
        complete.update(ev.modalities)
    targets = {}
    for target in sorted(rec.truth):
        row = {"true_class": rec.truth[target], "agents": {}}
        for agent in rec.agents:
            ev = last.get((agent, target))
            if ev is None:
                row["agents"][agent] = {"top_class": None, "probability": None, "modalities": [], "contributors": [],
                                        "correct": False}
                continue
            k = int(np.argmax(ev.probabilities))
            changes, top = [], None
            for e in series[(agent, target)]:
                c = names[int(np.argmax(e.probabilities))]
                if c != top:
                    changes.append([round(float(e.t), 3), c, "+".join(e.modalities)])
                    top = c
            row["agents"][agent] = {"top_class": names[k], "probability": round(float(ev.probabilities[k]), 4),
                                    "modalities": list(ev.modalities), "contributors": list(ev.contributors),
                                    "correct": names[k] == rec.truth[target], "top_class_changes": changes}
        targets[target] = row
    agents = {}
    for agent in rec.agents:
        correct = [targets[t]["agents"][agent]["correct"] for t in targets]
        ttc = {}
        flips = flips_complete = 0
        flipped = []
        for target in targets:
            evs = series.get((agent, target), [])
            true = rec.truth[target]
            t_ok = None
            was_ok = was_ok_complete = False
            n_complete = 0
            for ev in evs:  # the start of the final run of correct top classes
                ok = names[int(np.argmax(ev.probabilities))] == true
                full = complete <= set(ev.modalities)
                flips += was_ok and not ok
                if was_ok_complete and not ok:
                    n_complete += 1
                was_ok, was_ok_complete = ok, ok and full
                if ok:
                    t_ok = ev.t if t_ok is None else t_ok
                else:
                    t_ok = None
            flips_complete += n_complete
            if n_complete:
                flipped.append(target)
            if t_ok is not None:
                start = rec.first_observation.get((agent, target), evs[0].t)
                ttc[target] = round(max(0.0, t_ok - start), 3)
        agents[agent] = {
            "accuracy": round(float(np.mean(correct)) if correct else 0.0, 4),
            "time_to_correct_s": round(float(np.median(list(ttc.values()))), 3) if ttc else None,
            "time_to_correct_per_target": ttc,
            "targets_with_belief": sum(1 for t in targets if (agent, t) in last),
            "flips_after_correct": int(flips),
            "flips_after_complete_correct": int(flips_complete),
            "flipped_targets": flipped,
        }
    out = {"targets": targets, "agents": agents}
    out.update(rec.meta)
    out.setdefault("exchange", True)
    return out


def format_tables(summary: Mapping) -> str:
    """Plain-text tables of :func:`summarise`'s output: per target, then per agent."""
    agents = list(summary["agents"])
    lines = []
    if summary.get("class_belief_head") is False:
        lines += ["The model bundle has no class-belief head (trained without labels): agents publish latents only,",
                  "so there are no class beliefs and the accuracies below are not meaningful.", ""]
    head = f"{'target':<10} {'true class':<22}" + "".join(f" {a:<34}" for a in agents)
    lines += [head, "-" * len(head)]
    for target, row in summary["targets"].items():
        cells = []
        for a in agents:
            c = row["agents"][a]
            if c["top_class"] is None:
                cells.append(f" {'(no belief)':<34}")
            else:
                mods = "+".join(m[0].upper() for m in c["modalities"]) or "-"
                mark = "✓" if c["correct"] else "✗"
                cells.append(f" {mark} {c['top_class']:<20} {c['probability']:.2f} {mods:<6}")
        lines.append(f"{target:<10} {row['true_class']:<22}" + "".join(cells))
    lines.append("")
    lines.append("(modalities: C camera, L lidar, R reflectance)")
    lines.append("")
    head = (f"{'agent':<14} {'accuracy':>9} {'time to correct (median, s)':>28} {'targets seen':>13} "
            f"{'flips (right with all evidence -> wrong)':>41}")
    lines += [head, "-" * len(head)]
    for a, s in summary["agents"].items():
        ttc = "-" if s["time_to_correct_s"] is None else f"{s['time_to_correct_s']:.2f}"
        flips = s.get("flips_after_complete_correct")
        lines.append(f"{a:<14} {s['accuracy']:>9.1%} {ttc:>28} {s['targets_with_belief']:>13} "
                     f"{'-' if flips is None else flips:>41}")
    return "\n".join(lines)


def plot(rec: RunRecord, path: str, title: str = "") -> None:
    """PNG: the true class's probability over time per agent and target, and the latent trajectories in 2-D.

    The 2-D view projects every published latent mean with a PCA fitted on all of them (scikit-learn); each
    agent's belief about a target is a polyline of its successive latents (one point per in-place fusion or merge,
    in the spirit of FUSION 2019 Fig. 5), coloured by the target's true class.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    names = list(rec.class_names)
    targets = sorted(rec.truth)
    cols = 4
    rows = max(1, int(np.ceil(len(targets) / cols)))
    fig = plt.figure(figsize=(4.2 * cols + 6.5, 2.9 * rows + 0.6))
    gs = fig.add_gridspec(rows, cols + 2)
    colours = plt.get_cmap("tab10")
    for i, target in enumerate(targets):
        ax = fig.add_subplot(gs[i // cols, i % cols])
        true = rec.truth[target]
        k = names.index(true) if true in names else None
        for j, agent in enumerate(rec.agents):
            evs = [e for e in rec.beliefs if e.agent == agent and e.target == target]
            if not evs or k is None:
                continue
            # agents that agree exactly overlap: wider, lighter lines underneath keep every one visible
            ax.step([e.t for e in evs], [float(e.probabilities[k]) for e in evs], where="post",
                    color=colours(j), label=agent, lw=1.0 + 2.0 * (len(rec.agents) - 1 - j),
                    alpha=0.9 if j == len(rec.agents) - 1 else 0.55, ls=("-", "--", ":", "-.")[j % 4])
        ax.set_title(f"{target}: {true}", fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.axhline(1.0 / max(1, len(names)), color="0.7", lw=0.8, ls=":")
        ax.tick_params(labelsize=7)
        if i % cols == 0:
            ax.set_ylabel("p(true class)", fontsize=8)
        if i // cols == rows - 1:
            ax.set_xlabel("time (s)", fontsize=8)
        if i == 0:
            ax.legend(fontsize=7, loc="lower right")
    ax = fig.add_subplot(gs[:, cols:])
    if len(rec.latents) >= 2:
        z = np.stack([e.mean for e in rec.latents])
        p2 = PCA(n_components=2, random_state=0).fit(z).transform(z)
        idx = {}
        for n, e in enumerate(rec.latents):
            idx.setdefault((e.agent, e.target), []).append(n)
        cls_col = plt.get_cmap("tab10")
        for (agent, target), ns in idx.items():
            true = rec.truth.get(target)
            c = cls_col(names.index(true) % 10) if true in names else "0.5"
            ax.plot(p2[ns, 0], p2[ns, 1], "-", color=c, lw=0.8, alpha=0.7)
            ax.plot(p2[ns[:-1], 0], p2[ns[:-1], 1], ".", color=c, ms=3, alpha=0.6)
            ax.plot(p2[ns[-1], 0], p2[ns[-1], 1], "o", color=c, ms=6, mec="k", mew=0.5)
        for k, name in enumerate(names):
            if name in rec.truth.values():
                ax.plot([], [], "o", color=cls_col(k % 10), label=name)
        ax.legend(fontsize=7, loc="best")
        ax.set_xlabel("latent PC 1")
        ax.set_ylabel("latent PC 2")
    ax.set_title("belief trajectories in the shared latent space\n(dots: fusion steps, circles: final beliefs)",
                 fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
