"""``m2vae-fusion bench reliability``: the fusion nodes under faults (issue 13), each part against live processes
(simulated world ``sim_world`` + one ``fusion_node`` per agent, real DDS), figures read from the nodes' own
``/diagnostics`` and from what they publish:

1. ``fuzz``: 3 agents tour the world twice with the same seed, once alone and once while a fuzzer process
   (:mod:`m2vae_fusion.benchmarks.reliability_children`) sends hostile messages of every kind in
   :mod:`m2vae_fusion.benchmarks.hostile` (images, LaserScans, reflectance scans, peer latents with finite extremes,
   bad stamps and ids) mixed with the honest traffic. The cases a node may accept (valid but odd frames and latents)
   go about targets of their own: latents name ``fuzz_<agent>``, sensor frames are stamped inside an agent's transit
   (``--fuzz-accepted-sensor any``: at any time, where a valid fake frame becomes evidence about the honest target).
   Reported: crashes (nodes that exited), corrupt outputs
   (non-finite latents, non-finite or non-normalised beliefs, counted by a monitor process), hostile messages sent
   and the drops the nodes counted (by source and reason; the sensor topics are best-effort depth 1 as deployed, so
   some hostile messages are superseded in DDS before they reach a callback: ``received`` says how many arrived),
   ``internal_error`` drops, and honest accuracy (top class of each agent's last belief per object) with and
   without the fuzz.
2. ``restart``: 3 agents; one is killed (SIGKILL) part-way through and started again. Reported: seconds from the
   restarted node being up (its "fusing" log line) until its beliefs are again as accurate as just before the kill
   (over the objects it held beliefs about then), its first belief after the restart, and the ``spoofed`` drops it
   counted (peers relaying its own pre-crash evidence).
3. ``loss``: 2 agents (camera / LiDAR + reflectance) in two network namespaces joined by a veth pair; each namespace
   runs its own copy of the simulated world with one agent (same seed: same objects, same tour order, so both agents
   inspect the same object at about the same time), so only the agents' exchange crosses the link, where nftables
   drops a random 20 % of the packets entering each namespace (``numgen random mod 100 < 20``; this kernel has no
   netem). Fast DDS over UDPv4 only (no shared memory across namespaces), discovery range SUBNET (the namespaces
   see nothing of the host's other DDS traffic). Reported per seed, with and without loss: accuracy and the
   receiving nodes' own peer-evidence age (``peer_evidence.age_s.p99`` from /diagnostics: how stale a node's copy of
   the peer's evidence about the target both observe is while the peer keeps observing it,
   :mod:`m2vae_fusion.core.agent`); over the seeds the mean accuracy with a 95 % Student-t interval. Also the age of
   the sender's newest evidence in each shared latent when a monitor process in the receiving namespace gets it
   (receive wall time − newest modality stamp from the sender; same clock), p50/p99. ``--loss-share-rate`` sets the
   agents' ``shared_latent_rate``. Needs root, ``ip`` and ``nft``: ``scripts/install_netns_deps.sh`` installs them
   from the distribution where missing (root); without root the part is skipped with the reason printed. The
   namespaces are deleted at the end, also on failure or Ctrl-C.
4. ``soak``: 8 agents for ``--soak-minutes``: each node's RSS (psutil, every 10 s) and its receive → publish latency
   percentiles from ``/diagnostics`` over time; reported as the change between the first and the last minute.
5. ``stops``: ``--stops`` stops spread over program (fusion_node, sim_world, demo, recorder) × signal (SIGINT,
   SIGTERM, SIGINT to the process group = Ctrl-C in a terminal), each while a sim_world and a fusion node keep the
   domain busy: exit status and tracebacks in the program's output.

DDS: localhost discovery on a domain of its own (``--domain``, else ROS_DOMAIN_ID, else one derived from the process
id), except the ``loss`` part (its own namespaces). Every child process is stopped in ``finally``. Timings on a
shared machine are noisy; the figures are from one run.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from m2vae_fusion.benchmarks.common import fmt, load_average, machine_info, table, target, targets_table, write_json
from m2vae_fusion.child import LoggedProcess

HELP = ("reliability: fuzz of 3 live agents, kill/restart of one, 20 % packet loss between network namespaces, "
        "8-agent soak, 100 stops (exit status, tracebacks)")
PARTS = ("fuzz", "restart", "loss", "soak", "stops")
FULL = {"objects": 8, "fuzz_messages": 10500, "loss_seeds": 5, "soak_minutes": 5.0, "stops": 100}
QUICK = {"objects": 4, "fuzz_messages": 2000, "loss_seeds": 1, "soak_minutes": 1.0, "stops": 12}
NODE = "m2vae_fusion.ros.fusion_node"
SIM = "m2vae_fusion.ros.sim_world_node"
CHILDREN = "m2vae_fusion.benchmarks.reliability_children"
RIGS3 = ["camera", "lidar+reflectance", "all"]


def configure(parser):
    parser.add_argument("--json", metavar="OUT", help="write the results here (JSON)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a few-minute version: {QUICK['objects']} objects, {QUICK['fuzz_messages']} hostile "
                             f"messages, 1 loss seed, 1-minute soak, {QUICK['stops']} stops")
    parser.add_argument("--skip", default="", help=f"comma-separated parts to skip, from {','.join(PARTS)}")
    parser.add_argument("--objects", type=int, help="objects in the world (easy world; default 8, --quick 4)")
    parser.add_argument("--fuzz-messages", type=int, help="hostile messages in the fuzz part (default 10500)")
    parser.add_argument("--fuzz-accepted-sensor", choices=("transit", "any"), default="transit",
                        help="when the fuzzer sends the sensor cases a node may accept (valid but odd frames): only "
                             "stamped inside an agent's transit, fused into no target (default), or at any time, "
                             "where they become evidence about the honest target")
    parser.add_argument("--loss-seeds", type=int, help="world seeds of the loss part (default 5)")
    parser.add_argument("--loss-percent", type=float, default=20.0, help="packets dropped on the link (%%)")
    parser.add_argument("--loss-share-rate", type=float,
                        help="the loss part's agents' shared_latent_rate (Hz per target; default: config/fusion.yaml)")
    parser.add_argument("--soak-minutes", type=float, help="minutes of the 8-agent soak (default 5)")
    parser.add_argument("--stops", type=int, help="stops in the stops part (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="world seed of the fuzz, restart and soak parts")
    parser.add_argument("--model-dir", default="", help="model bundle (default: the bundled models/amiro)")
    parser.add_argument("--domain", type=int, help="ROS_DOMAIN_ID of the host parts (default: ROS_DOMAIN_ID or "
                                                   "one derived from the process id)")
    parser.add_argument("--log-dir", help="node logs (default: a temporary directory)")


# -- processes ----------------------------------------------------------------------------------------------------
class Child(LoggedProcess):
    """A child process in a session of its own (``prefix``: e.g. ``ip netns exec NAME``), output to a log file."""

    def __init__(self, cmd, log_path: str, env: dict | None = None, prefix=()):
        self.name = os.path.splitext(os.path.basename(log_path))[0]
        super().__init__([*prefix, *cmd], log_path, env)
        self.started = time.monotonic()

    def wait_log(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            if not self.alive():
                return False
            time.sleep(0.1)
        return False

    def stop(self, sig=signal.SIGTERM, timeout: float = 15.0, group: bool = False) -> int:
        """Send ``sig`` (to the process group with ``group``), wait, then SIGKILL the group. Returns the exit status."""
        if self.proc.poll() is None:
            try:
                if group:
                    os.killpg(self.proc.pid, sig)
                else:
                    self.proc.send_signal(sig)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(5)
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode


def ros_cmd(module: str, namespace: str, params: dict, log_dir: str, name: str, params_files=()) -> list:
    from m2vae_fusion.ros.harness import write_params

    cmd = [sys.executable, "-m", module, "--ros-args"]
    if namespace:
        cmd += ["-r", f"__ns:={namespace}"]
    for p in params_files:
        cmd += ["--params-file", str(p)]
    if params:
        cmd += ["--params-file", write_params(os.path.join(log_dir, f"{name}.yaml"), params)]
    return cmd


def child_cmd(spec: dict, log_dir: str, name: str) -> tuple:
    path = os.path.join(log_dir, f"{name}.json")
    spec = {**spec, "ready_file": os.path.join(log_dir, f"{name}.ready"),
            "result_file": os.path.join(log_dir, f"{name}.result.json")}
    with open(path, "w") as f:
        json.dump(spec, f)
    for p in (spec["ready_file"], spec["result_file"]):
        if os.path.exists(p):
            os.remove(p)
    return [sys.executable, "-m", CHILDREN, "--ros-args"], {"M2VAE_BENCH_CHILD": path}, spec


def _wait_file(path: str, timeout: float, procs=()) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return True
        if any(not p.alive() for p in procs):
            return False
        time.sleep(0.1)
    return False


def _read(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# -- one run of the simulated world ---------------------------------------------------------------------------------
class WorldRun:
    """Fusion nodes + monitor(s) + optional fuzzer + sim_world(s) for one tour; the processes' placement comes from
    ``layout`` (see :func:`host_layout`, :func:`netns_layout`). ``hook(run, t)`` is called every 0.2 s of the tour
    (t = seconds since the world started)."""

    def __init__(self, ctx: dict, layout: dict, duration: float, log_dir: str, fuzz: dict | None = None,
                 hook=None, agent_params: dict | None = None):
        self.ctx, self.layout, self.duration, self.log_dir = ctx, layout, duration, log_dir
        self.fuzz, self.hook, self.agent_params = fuzz, hook, agent_params or {}
        self.agents: dict = {}
        self.extra: list = []         # replaced agents (restart)
        self.monitors: dict = {}
        self.sims: list = []
        self.fuzzer = None
        self.events: dict = {}
        os.makedirs(log_dir, exist_ok=True)

    def start_agent(self, a: str, suffix: str = "") -> Child:
        spec = self.layout["agents"][a]
        params = {"agent_id": a, "model_dir": self.ctx["model_dir"], "modalities": spec["rig"],
                  "belief_ttl": 3600.0, "max_targets": 32, "max_latent_age": -1.0, "diagnostics_period": 0.5,
                  **spec.get("topics", {}), **self.agent_params}
        name = f"{a}{suffix}"
        cmd = ros_cmd(NODE, f"/{a}", params, self.log_dir, name, [self.ctx["fusion_yaml"]])
        return Child(cmd, os.path.join(self.log_dir, f"{name}.log"), self.layout["env"], spec.get("prefix", ()))

    def __enter__(self):
        return self

    def run(self) -> dict:
        lay = self.layout
        for a in lay["agents"]:
            self.agents[a] = self.start_agent(a)
        for a, p in self.agents.items():
            if not p.wait_log("fusing", 120):
                raise RuntimeError(f"fusion node {a} did not start; its log {p.log_path}:\n{p.log()[-2000:]}")
        for m, spec in lay["monitors"].items():
            cmd, env, full = child_cmd({"role": "monitor", "name": f"rel_{m}", **spec["spec"]}, self.log_dir, m)
            self.monitors[m] = (Child(cmd, os.path.join(self.log_dir, f"{m}.log"), {**lay["env"], **env},
                                      spec.get("prefix", ())), full)
        for m, (p, full) in self.monitors.items():
            if not _wait_file(full["ready_file"], 60, [p]):
                raise RuntimeError(f"monitor {m} did not start; its log {p.log_path}:\n{p.log()[-2000:]}")
        if self.fuzz:
            cmd, env, full = child_cmd({"role": "fuzzer", **self.fuzz}, self.log_dir, "fuzzer")
            self.fuzzer = (Child(cmd, os.path.join(self.log_dir, "fuzzer.log"), {**lay["env"], **env}), full)
            if not _wait_file(full["ready_file"], 90, [self.fuzzer[0]]):
                raise RuntimeError(f"fuzzer did not start; its log:\n{self.fuzzer[0].log()[-2000:]}")
        for i, sim in enumerate(lay["sims"]):
            name = f"sim_world{i}"
            cmd = ros_cmd(SIM, "", sim["params"], self.log_dir, name, [self.ctx["sim_yaml"]])
            self.sims.append(Child(cmd, os.path.join(self.log_dir, f"{name}.log"), lay["env"], sim.get("prefix", ())))
        for s in self.sims:
            if not s.wait_log("touring", 120):
                raise RuntimeError(f"sim_world did not start; its log {s.log_path}:\n{s.log()[-2000:]}")
        self.t0 = time.monotonic()
        crashed = []
        while (t := time.monotonic() - self.t0) < self.duration:
            if self.hook is not None:
                self.hook(self, t)
            for a, p in self.agents.items():
                if not p.alive() and a not in self.events.get("killed", []) and a not in crashed:
                    crashed.append(a)
            time.sleep(0.2)
        if self.fuzzer is not None:  # a fuzzer slowed down by the machine's load: let it send every message
            deadline = time.monotonic() + 90.0
            while not os.path.exists(self.fuzzer[1]["result_file"]) and time.monotonic() < deadline:
                time.sleep(0.2)
        time.sleep(1.0)  # the last beliefs in flight
        return self.finish(crashed)

    def finish(self, crashed) -> dict:
        codes = {}
        for s in self.sims:
            codes[s.name] = s.stop()
        fuzz_result = None
        if self.fuzzer is not None:
            codes["fuzzer"] = self.fuzzer[0].stop()
            fuzz_result = _read(self.fuzzer[1]["result_file"])
            self.fuzzer = None
        time.sleep(1.2)  # one more /diagnostics period
        mons = {}
        for m, (p, full) in self.monitors.items():
            codes[m] = p.stop(signal.SIGTERM, 20)
            mons[m] = _read(full["result_file"])
        self.monitors = {}
        tracebacks = {}
        for a, p in [*self.agents.items(), *[(x.name, x) for x in self.extra]]:
            codes[p.name] = p.stop()
            tb = p.log().count("Traceback")
            if tb:
                tracebacks[p.name] = tb
        for s in self.sims:
            tb = s.log().count("Traceback")
            if tb:
                tracebacks[s.name] = tb
        self.agents = {}
        return {"monitors": mons, "exit_codes": codes, "crashed": crashed, "tracebacks": tracebacks,
                "fuzzer": fuzz_result, "events": self.events, "t0": self.t0}

    def __exit__(self, *exc):
        for p in [*self.sims, *self.agents.values(), *self.extra]:
            p.stop(timeout=5)
        for p, _ in self.monitors.values():
            p.stop(timeout=5)
        if self.fuzzer is not None:
            self.fuzzer[0].stop(timeout=5)
        return False


def host_layout(agents: dict, ctx: dict, age_from=(), fuzz_peer: str | None = None) -> dict:
    """All processes on this host's network: agents ``{name: rig}``, one sim_world, one monitor."""
    names = list(agents)
    sim = {"num_agents": len(names), "sensors": [agents[a] for a in names], "objects": ctx["objects"],
           "world": ctx["world"], "seed": ctx["seed"], "inspect_duration": 4.0, "transit_duration": 1.0}
    return {"env": ctx["host_env"],
            "agents": {a: {"rig": agents[a].split("+") if agents[a] != "all" else
                           ["camera", "lidar", "reflectance"]} for a in names},
            "sims": [{"params": sim}],
            "monitors": {"monitor": {"spec": {"belief_agents": names, "agents": names,
                                              "shared_topic": "/m2vae/latents",
                                              "truth_topic": "/sim/ground_truth", "age_from": list(age_from)}}}}


def accuracy(mon: dict, agents, class_names, until: float | None = None, targets=None) -> dict:
    """Per agent: fraction of objects (``targets``, default all of the ground truth) whose top class in the agent's
    last belief (received by the monitor before ``until`` s, wall time since the monitor started) is the true
    class; objects without a belief count as wrong."""
    truth = mon.get("truth") or {}
    targets = sorted(truth) if targets is None else list(targets)
    last = {}
    for t, agent, target_id, probs, _ in mon.get("beliefs", []):
        if until is not None and t > until:
            break
        last[(agent, target_id)] = probs
    out = {}
    for a in agents:
        ok = []
        for tg in targets:
            p = last.get((a, tg))
            ok.append(p is not None and class_names[max(range(len(p)), key=p.__getitem__)] == truth.get(tg))
        out[a] = sum(ok) / len(ok) if ok else None
    return out


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _diag_of(mon: dict, agent: str) -> dict:
    for name, vals in (mon or {}).get("diag", {}).items():
        if name.startswith(f"/{agent}/fusion_node"):
            return vals
    return {}


def _prefix_sum(vals: dict, prefix: str) -> int:
    return sum(v for k, v in vals.items() if k.startswith(prefix) and isinstance(v, int))


# -- parts --------------------------------------------------------------------------------------------------------
def part_fuzz(ctx, opts, say) -> dict:
    agents = {f"agent{i}": r for i, r in enumerate(RIGS3)}
    # at most ~150 hostile messages per second (a Python publisher on a loaded 2-core machine keeps up with that):
    # the world tours for longer when there are more messages; both runs tour for the same time
    duration = max(ctx["tour"], opts["fuzz_messages"] / 150.0 + 2.0)
    res = {"agents": agents, "duration_s": duration}
    for label, fuzz in (("without_fuzz", None), ("with_fuzz", True)):
        log_dir = os.path.join(ctx["log_dir"], f"fuzz_{label}")
        fspec = None
        if fuzz:
            fspec = {"agents": list(agents), "manifest": ctx["manifest_path"], "shared_topic": "/m2vae/latents",
                     "messages": opts["fuzz_messages"], "rate": opts["fuzz_messages"] / max(1.0, duration - 2.0),
                     "seed": ctx["seed"], "peer": "fuzz_peer", "accepted_sensor": opts["fuzz_accepted_sensor"],
                     "transit_window": 0.6}
        say(f"fuzz: {label.replace('_', ' ')} ({duration:.0f} s of the world, 3 agents)")
        # the agents trust each other and the fuzzer's trusted-but-faulty peer id, not its other ids (the trust
        # list is the defence against unknown agents; with an empty list every agent id is merged)
        trust = {"trusted_agents": [*agents, "fuzz_peer"]}
        with WorldRun(ctx, host_layout(agents, ctx), duration, log_dir, fuzz=fspec, agent_params=trust) as run:
            r = run.run()
        mon = r["monitors"]["monitor"] or {}
        acc = accuracy(mon, agents, ctx["class_names"])
        diag = {a: _diag_of(mon, a) for a in agents}
        res[label] = {
            "accuracy": acc, "mean_accuracy": _mean(acc.values()), "crashed": r["crashed"],
            "exit_codes": r["exit_codes"], "tracebacks": r["tracebacks"],
            "corrupt_outputs": mon.get("n_corrupt"), "corrupt_examples": mon.get("corrupt", [])[:5],
            "beliefs_seen": mon.get("n_beliefs"), "latents_seen": mon.get("n_latents"),
            "received": {a: {k: v for k, v in d.items() if k.startswith("received.")} for a, d in diag.items()},
            "dropped": {a: {k: v for k, v in d.items() if k.startswith("dropped.") and k != "dropped.total"}
                        for a, d in diag.items()},
            "internal_errors": sum(_prefix_sum({k: v for k, v in d.items() if k.endswith(".internal_error")},
                                               "dropped.") for d in diag.values()),
            "fuzzer": r["fuzzer"]}
    w, f = res["without_fuzz"], res["with_fuzz"]
    res["sent"] = (f.get("fuzzer") or {}).get("sent", 0)
    res["dropped_extra"] = {a: _prefix_sum(_dict_sub(f["dropped"][a], w["dropped"][a]), "dropped.") for a in agents}
    return res


def _dict_sub(a: dict, b: dict) -> dict:
    return {k: a.get(k, 0) - b.get(k, 0) for k in set(a) | set(b)}


def part_restart(ctx, opts, say) -> dict:
    agents = {f"agent{i}": r for i, r in enumerate(RIGS3)}
    victim = "agent1"
    duration = ctx["tour"] * 1.5
    t_kill = 0.4 * ctx["tour"]
    log_dir = os.path.join(ctx["log_dir"], "restart")
    state = {}

    def hook(run, t):
        if "killed_at" not in state and t >= t_kill:
            run.agents[victim].proc.kill()  # SIGKILL: no shutdown at all
            run.agents[victim].proc.wait(5)
            state["killed_at"] = time.monotonic()
            run.events["killed"] = [victim]
            run.extra.append(run.agents.pop(victim))
            time.sleep(1.0)
            state["restarted_at"] = time.monotonic()
            run.agents[victim] = run.start_agent(victim, "_restarted")
        elif "restarted_at" in state and "up_at" not in state and "fusing" in run.agents[victim].log():
            state["up_at"] = time.monotonic()

    say(f"restart: 3 agents, SIGKILL {victim} at {t_kill:.0f} s, restart 1 s later ({duration:.0f} s in all)")
    with WorldRun(ctx, host_layout(agents, ctx), duration, log_dir, hook=hook) as run:
        r = run.run()
    mon = r["monitors"]["monitor"] or {}
    out = {"victim": victim, "duration_s": duration, "exit_codes": r["exit_codes"], "crashed": r["crashed"],
           "tracebacks": r["tracebacks"], "corrupt_outputs": mon.get("n_corrupt")}
    if "killed_at" not in state or not mon:
        out["error"] = "the kill did not happen or the monitor wrote nothing"
        return out
    # monitor times are wall seconds since the monitor started; convert the events
    wall0 = mon["t0_wall"]
    to_mon = lambda mono: (time.time() - (time.monotonic() - mono)) - wall0  # noqa: E731
    t_kill_m = to_mon(state["killed_at"])
    t_up_m = to_mon(state["up_at"]) if "up_at" in state else None
    before = {}
    for t, agent, tg, probs, _ in mon["beliefs"]:
        if agent == victim and t < t_kill_m:
            before[tg] = probs
    names, truth = ctx["class_names"], mon.get("truth") or {}
    top = lambda p: names[max(range(len(p)), key=p.__getitem__)]  # noqa: E731
    ref = sorted(before)
    acc_before = (sum(top(before[tg]) == truth.get(tg) for tg in ref) / len(ref)) if ref else None
    out.update({"objects_held_before_kill": len(ref), "accuracy_before_kill": acc_before,
                "up_after_restart_s": (state["up_at"] - state["restarted_at"]) if "up_at" in state else None})
    t_full = t_first = None
    if t_up_m is not None and ref:
        now_b = {}
        for t, agent, tg, probs, _ in mon["beliefs"]:
            if agent != victim or t < t_up_m:
                continue
            t_first = t if t_first is None else t_first
            now_b[tg] = probs
            acc = sum(tg in now_b and top(now_b[tg]) == truth.get(tg) for tg in ref) / len(ref)
            if acc >= acc_before:
                t_full = t
                break
    out["first_belief_after_up_s"] = None if t_first is None else round(t_first - t_up_m, 2)
    out["full_accuracy_after_up_s"] = None if t_full is None else round(t_full - t_up_m, 2)
    out["observed_after_up_s"] = None if t_up_m is None else round(duration - (t_up_m - to_mon(run.t0)), 1)
    d = _diag_of(mon, victim)
    out["spoofed_drops"] = d.get("dropped.peer.spoofed", 0)
    out["victim_dropped"] = {k: v for k, v in d.items() if k.startswith("dropped.") and k != "dropped.total"}
    out["accuracy_end"] = accuracy(mon, agents, names)
    return out


# -- loss between network namespaces --------------------------------------------------------------------------------
NS = ("m2vae_rel_a", "m2vae_rel_b")
VETH = ("m2vrel_a", "m2vrel_b")
ADDR = ("10.213.7.1", "10.213.7.2")


def _sh(*cmd, check=True):
    res = subprocess.run(list(cmd), capture_output=True, text=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {res.stderr.strip() or res.stdout.strip()}")
    return res


def netns_unavailable() -> str | None:
    """Why the loss part cannot run here (None: it can): root, ``ip`` and ``nft`` (installed by
    scripts/install_netns_deps.sh where missing)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and nftables rules); run the benchmark as root to include it"
    if not (shutil.which("ip") and shutil.which("nft")):
        from m2vae_fusion.paths import share_path

        script = share_path("scripts", "install_netns_deps.sh")
        if not os.path.isfile(script):
            script = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "install_netns_deps.sh")
        res = subprocess.run(["bash", script], capture_output=True, text=True)
        if res.returncode != 0 or not (shutil.which("ip") and shutil.which("nft")):
            return f"ip / nft missing and {script} could not install them: {(res.stderr or res.stdout).strip()}"
    return None


def netns_up(loss_percent: float) -> None:
    netns_down()
    for ns in NS:
        _sh("ip", "netns", "add", ns)
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
    _sh("ip", "link", "add", VETH[0], "type", "veth", "peer", "name", VETH[1])
    for ns, dev, addr in zip(NS, VETH, ADDR):
        _sh("ip", "link", "set", dev, "netns", ns)
        _sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
        _sh("ip", "-n", ns, "link", "set", dev, "up")
        _sh("ip", "-n", ns, "link", "set", dev, "multicast", "on")
        _sh("ip", "-n", ns, "route", "add", "239.0.0.0/8", "dev", dev, check=False)  # DDS discovery multicast
        if loss_percent > 0:
            p = int(round(loss_percent))
            _sh("ip", "netns", "exec", ns, "nft", "add", "table", "inet", "m2vae_loss")
            _sh("ip", "netns", "exec", ns, "nft", "add", "chain", "inet", "m2vae_loss", "in",
                "{ type filter hook input priority 0 ; policy accept ; }")
            _sh("ip", "netns", "exec", ns, "nft", "add", "rule", "inet", "m2vae_loss", "in", "iifname", dev,
                "numgen", "random", "mod", "100", "<", str(p), "counter", "drop")


def netns_drops() -> dict:
    """Packets the nftables rules dropped per namespace (parsed from ``nft list table``)."""
    out = {}
    for ns in NS:
        res = _sh("ip", "netns", "exec", ns, "nft", "list", "table", "inet", "m2vae_loss", check=False)
        words = res.stdout.split()
        out[ns] = int(words[words.index("packets") + 1]) if "packets" in words else 0
    return out


def netns_down() -> None:
    for ns in NS:
        _sh("ip", "netns", "del", ns, check=False)
    _sh("ip", "link", "del", VETH[0], check=False)


def netns_layout(ctx: dict) -> dict:
    """agent0 (camera) + a world in namespace a; agent1 (LiDAR + reflectance) + a copy of the world publishing under
    /shadow0 in namespace b; one monitor per namespace. Each world has one agent, so both agents tour the objects
    in the same order at (about) the same time: they observe the same target together, which is what the
    peer-evidence age is about (the worlds start a few tenths of a second apart; the node counts an age sample only
    while the peer observes the target)."""
    sim = {"num_agents": 1, "objects": ctx["objects"], "world": ctx["world"], "seed": ctx["seed"],
           "inspect_duration": 4.0, "transit_duration": 1.0}
    pre = [["ip", "netns", "exec", ns] for ns in NS]
    shadow = {"camera_topic": "/shadow0/camera/image_raw", "lidar_topic": "/shadow0/scan",
              "reflectance_topic": "/shadow0/reflectance", "target_topic": "/shadow0/target_of_interest"}
    return {"env": {"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET", "FASTDDS_BUILTIN_TRANSPORTS": "UDPv4",
                    "ROS_DOMAIN_ID": str(ctx["loss_domain"]), "FASTDDS_DEFAULT_PROFILES_FILE": ""},
            "agents": {"agent0": {"rig": ["camera"], "prefix": pre[0]},
                       "agent1": {"rig": ["lidar", "reflectance"], "prefix": pre[1], "topics": shadow}},
            "sims": [{"params": {**sim, "sensors": ["camera"]}, "prefix": pre[0]},
                     {"params": {**sim, "sensors": ["lidar+reflectance"], "agent_prefix": "shadow",
                                 "ground_truth_topic": "/sim_b/ground_truth"}, "prefix": pre[1]}],
            "monitors": {"monitor_a": {"prefix": pre[0], "spec": {
                             "belief_agents": ["agent0"], "shared_topic": "/m2vae/latents",
                             "truth_topic": "/sim/ground_truth", "age_from": ["agent1"]}},
                         "monitor_b": {"prefix": pre[1], "spec": {
                             "belief_agents": ["agent1"], "shared_topic": "/m2vae/latents",
                             "truth_topic": "/sim_b/ground_truth", "age_from": ["agent0"]}}}}


def _diag_value(monitor: dict, agent: str, key: str):
    """The last /diagnostics value ``key`` of ``agent``'s fusion node as a monitor recorded it, or None."""
    for name, vals in (monitor.get("diag") or {}).items():
        if f"/{agent}/fusion_node" in name and key in vals:
            try:
                return float(vals[key])
            except (TypeError, ValueError):
                return None
    return None


def part_loss(ctx, opts, say) -> dict:
    why = netns_unavailable()
    if why:
        say(f"loss: skipped: {why}")
        return {"skipped": why}
    import numpy as np

    runs = []
    share = {} if opts.get("loss_share_rate") is None else {"shared_latent_rate": float(opts["loss_share_rate"])}
    try:
        for seed in range(opts["loss_seeds"]):
            for loss in (0.0, opts["loss_percent"]):
                sctx = {**ctx, "seed": seed}
                say(f"loss: seed {seed}, {loss:g} % loss ({ctx['tour']:.0f} s tour, 2 agents in 2 namespaces)")
                netns_up(loss)
                try:
                    with WorldRun(sctx, netns_layout(sctx), ctx["tour"],
                                  os.path.join(ctx["log_dir"], f"loss_{seed}_{int(loss)}"),
                                  agent_params=share) as run:
                        r = run.run()
                    drops = netns_drops() if loss > 0 else {}
                finally:
                    netns_down()
                ma, mb = r["monitors"]["monitor_a"] or {}, r["monitors"]["monitor_b"] or {}
                acc = {**accuracy(ma, ["agent0"], ctx["class_names"]),
                       **accuracy(mb, ["agent1"], ctx["class_names"])}
                ages = [x[2] for m in (ma, mb) for x in m.get("latent_ages", [])]
                a = np.asarray(ages) if ages else None
                # the measure, as each receiving node summarises it in /diagnostics: how stale its copy of
                # the peer's evidence about the target both observe is while the peer observes it
                # (peer_evidence.age_s.p99 over its last 1000 confirmed samples, i.e. the whole tour)
                held = [_diag_value(m, agent, "peer_evidence.age_s.p99") for m, agent in ((ma, "agent0"),
                                                                                          (mb, "agent1"))]
                held = [v for v in held if v is not None]
                samples = {agent: {k: _diag_value(m, agent, f"peer_evidence.age_{k}")
                                   for k in ("samples", "discarded", "pending")}
                           for m, agent in ((ma, "agent0"), (mb, "agent1"))}
                runs.append({"seed": seed, "loss_percent": loss, "accuracy": acc, "mean_accuracy": _mean(acc.values()),
                             "peer_latents_received": len(ages),
                             "arrival_age_s": None if a is None else {
                                 "p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)),
                                 "max": float(a.max())},
                             "evidence_age_s": {"p99": max(held), "per_agent_p99": held,
                                                "samples": samples} if held else None,
                             "load_average": load_average(),
                             "nft_dropped_packets": drops, "crashed": r["crashed"],
                             "corrupt_outputs": (ma.get("n_corrupt") or 0) + (mb.get("n_corrupt") or 0),
                             "exit_codes": r["exit_codes"]})
    finally:
        netns_down()
    from m2vae_fusion.benchmarks.alpha import interval

    summ = {}
    for loss in (0.0, opts["loss_percent"]):
        rr = [x for x in runs if x["loss_percent"] == loss]
        p99 = [x["evidence_age_s"]["p99"] for x in rr if x["evidence_age_s"]]
        acc = interval([x["mean_accuracy"] for x in rr if x["mean_accuracy"] is not None])
        summ[f"{loss:g}"] = {"mean_accuracy": _mean([x["mean_accuracy"] for x in rr]),
                             "accuracy_ci95": acc["ci95"], "evidence_age_p99_s_mean": _mean(p99),
                             "evidence_age_p99_s_ci95": interval(p99)["ci95"],
                             "evidence_age_p99_s_max": max(p99) if p99 else None, "seeds": len(rr)}
    return {"runs": runs, "summary": summ, "loss_percent": opts["loss_percent"],
            "shared_latent_rate": share.get("shared_latent_rate", "config/fusion.yaml")}


def part_soak(ctx, opts, say) -> dict:
    import psutil

    agents = {f"agent{i}": ("camera" if i % 2 == 0 else "lidar+reflectance") for i in range(8)}
    duration = opts["soak_minutes"] * 60.0
    samples = []
    state = {"next": 0.0}

    def hook(run, t):
        if t < state["next"]:
            return
        state["next"] = t + 10.0
        row = {"t": round(t, 1), "rss_mb": {}}
        for a, p in run.agents.items():
            try:
                row["rss_mb"][a] = psutil.Process(p.pid).memory_info().rss / 1e6
            except psutil.Error:
                row["rss_mb"][a] = None
        samples.append(row)

    say(f"soak: 8 agents for {duration / 60:.1f} min")
    log_dir = os.path.join(ctx["log_dir"], "soak")
    lay = host_layout(agents, ctx)
    lay["monitors"]["monitor"]["spec"]["diag_history"] = True
    with WorldRun(ctx, lay, duration, log_dir, hook=hook) as run:
        r = run.run()
    mon = r["monitors"]["monitor"] or {}
    first = samples[0]["rss_mb"] if samples else {}
    last = samples[-1]["rss_mb"] if samples else {}
    growth = {a: (last.get(a) - first.get(a)) if first.get(a) and last.get(a) else None for a in agents}
    span_min = (samples[-1]["t"] - samples[0]["t"]) / 60.0 if len(samples) > 1 else None
    # the trend after warm-up (sessions, caches, DDS discovery): from the first sample at or after 60 s
    warm = next((x for x in samples if x["t"] >= 60.0), None)
    growth_warm = {a: (last.get(a) - warm["rss_mb"].get(a)) if warm and warm["rss_mb"].get(a) and last.get(a)
                   else None for a in agents}
    lat = _latency_trend(mon.get("diag_history", []), agents)
    return {"agents": agents, "duration_s": duration, "rss_samples": samples, "rss_growth_mb": growth,
            "rss_growth_mb_max": max((g for g in growth.values() if g is not None), default=None),
            "rss_span_min": span_min, "rss_growth_after_first_minute_mb": growth_warm,
            "rss_growth_after_first_minute_mb_max": max((g for g in growth_warm.values() if g is not None),
                                                        default=None),
            "latency_trend": lat, "crashed": r["crashed"], "exit_codes": r["exit_codes"],
            "tracebacks": r["tracebacks"], "corrupt_outputs": mon.get("n_corrupt"),
            "accuracy": accuracy(mon, agents, ctx["class_names"])}


def _latency_trend(history, agents) -> dict:
    """Median over agents of each agent's p50 receive → publish latency (ms, all sources' p50 averaged) in the first
    and the last minute of the history."""
    if not history:
        return {}
    t_end = max(h[0] for h in history)
    t_beg = min(h[0] for h in history)

    def window(lo, hi):
        per = {}
        for t, name, vals in history:
            if lo <= t <= hi:
                ps = [v for k, v in vals.items() if k.startswith("latency_ms.") and k.endswith(".p50")]
                if ps:
                    per.setdefault(name, []).append(sum(ps) / len(ps))
        meds = sorted(sum(v) / len(v) for v in per.values())
        return meds[len(meds) // 2] if meds else None

    return {"first_minute_p50_ms": window(t_beg, t_beg + 60), "last_minute_p50_ms": window(t_end - 60, t_end)}


# -- stops --------------------------------------------------------------------------------------------------------
PROGRAMS = ("fusion_node", "sim_world", "demo", "recorder")
SIGNALS = ("SIGINT", "SIGTERM", "group-SIGINT")


def part_stops(ctx, opts, say) -> dict:
    log_dir = os.path.join(ctx["log_dir"], "stops")
    os.makedirs(log_dir, exist_ok=True)
    env = ctx["host_env"]
    combos = [(p, s) for p in PROGRAMS for s in SIGNALS]
    n = opts["stops"]
    plan = [combos[i % len(combos)] for i in range(n)]
    # load: a world and a fusion node on the same domain for the whole part
    load_sim = Child(ros_cmd(SIM, "", {"num_agents": 1, "sensors": ["all"], "objects": ctx["objects"],
                                       "world": ctx["world"], "seed": 0}, log_dir, "load_sim", [ctx["sim_yaml"]]),
                     os.path.join(log_dir, "load_sim.log"), env)
    load_node = Child(ros_cmd(NODE, "/agent0", {"model_dir": ctx["model_dir"]}, log_dir, "load_node",
                              [ctx["fusion_yaml"]]), os.path.join(log_dir, "load_node.log"), env)
    rows = []
    say(f"stops: {n} stops over {len(PROGRAMS)} programs x {len(SIGNALS)} signals (a world and a node as load)")
    try:
        load_sim.wait_log("touring", 120)
        for i, (prog, how) in enumerate(plan):
            name = f"stop{i:03d}_{prog}_{how}"
            if prog == "fusion_node":
                cmd, ready = ros_cmd(NODE, f"/stop{i}", {"model_dir": ctx["model_dir"]}, log_dir, name,
                                     [ctx["fusion_yaml"]]), "fusing"
            elif prog == "sim_world":
                cmd, ready = ros_cmd(SIM, f"/stop{i}", {"num_agents": 1, "agent_prefix": f"s{i}_",
                                                        "ground_truth_topic": f"/stop{i}/ground_truth",
                                                        "objects": ctx["objects"], "world": ctx["world"]},
                                     log_dir, name, [ctx["sim_yaml"]]), "touring"
            elif prog == "recorder":
                cmd, ready = [sys.executable, "-m", "m2vae_fusion", "record", "--out",
                              os.path.join(log_dir, f"{name}_bag"), "--namespace", "agent0"], "recording "
            else:
                cmd, ready = [sys.executable, "-m", "m2vae_fusion", "demo", "--agents", "camera", "--objects", "2",
                              "--duration", "120", "--log-dir", os.path.join(log_dir, f"{name}_demo"),
                              "--model-dir", ctx["model_dir"]], None
            p = Child(cmd, os.path.join(log_dir, f"{name}.log"), env)
            t0 = time.monotonic()
            if ready is not None:
                ok = p.wait_log(ready, 120)
            else:  # the demo is up once its world tours
                sim_log = os.path.join(log_dir, f"{name}_demo", "sim_world.log")
                deadline = time.monotonic() + 150
                ok = False
                while time.monotonic() < deadline and p.alive():
                    if os.path.exists(sim_log) and "touring" in open(sim_log, errors="replace").read():
                        ok = True
                        break
                    time.sleep(0.2)
            time.sleep(1.0)
            sig = signal.SIGTERM if how == "SIGTERM" else signal.SIGINT
            t_sig = time.monotonic()
            code = p.stop(sig, timeout=30, group=how.startswith("group"))
            log = p.log()
            leftover = 0
            if prog == "demo":
                leftover = _leftover(os.path.join(log_dir, f"{name}_demo"))
            rows.append({"program": prog, "signal": how, "ready": ok, "exit": code,
                         "tracebacks": log.count("Traceback"), "stop_s": round(time.monotonic() - t_sig, 2),
                         "start_s": round(t_sig - t0, 1), "leftover_children": leftover})
            if code != 0 or log.count("Traceback"):
                say(f"  {name}: exit {code}, {log.count('Traceback')} traceback(s); log {p.log_path}")
    finally:
        load_node.stop()
        load_sim.stop()
    summary = {}
    for prog in PROGRAMS:
        for how in SIGNALS:
            rr = [r for r in rows if r["program"] == prog and r["signal"] == how]
            if rr:
                codes = {}
                for r in rr:
                    codes[str(r["exit"])] = codes.get(str(r["exit"]), 0) + 1
                summary[f"{prog}/{how}"] = {"n": len(rr), "exit_0": sum(r["exit"] == 0 for r in rr),
                                            "exit_codes": codes, "stop_s_max": max(r["stop_s"] for r in rr),
                                            "tracebacks": sum(r["tracebacks"] for r in rr),
                                            "not_ready": sum(not r["ready"] for r in rr)}
    return {"rows": rows, "summary": summary, "n": len(rows), "exit_0": sum(r["exit"] == 0 for r in rows),
            "tracebacks": sum(r["tracebacks"] for r in rows),
            "leftover_children": sum(r["leftover_children"] for r in rows)}


def _leftover(demo_log_dir: str) -> int:
    """Processes still running whose command line names the demo's log directory (its children's parameter files)."""
    import psutil

    n = 0
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(demo_log_dir in c for c in (proc.info["cmdline"] or [])):
                n += 1
                proc.kill()
        except psutil.Error:
            pass
    return n


# -- the command --------------------------------------------------------------------------------------------------
def run(args) -> int:
    from m2vae_fusion.core.bundle import read_manifest
    from m2vae_fusion.errors import UserError
    from m2vae_fusion.paths import default_bundle_path, share_path
    from m2vae_fusion.ros.demo import DemoConfig, resolve_world

    # a benchmark started in the background (``cmd &``) inherits SIGINT ignored, and so would every program it
    # starts: give them the default disposition (Ctrl-C works), as in a terminal
    signal.signal(signal.SIGINT, signal.default_int_handler)
    base = QUICK if args.quick else FULL
    opts = {k: (getattr(args, k) if getattr(args, k, None) is not None else v) for k, v in base.items()}
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    bad = skip - set(PARTS)
    if bad:
        raise UserError(f"--skip: unknown parts {sorted(bad)}; choose from {','.join(PARTS)}")
    for k in ("objects", "fuzz_messages", "loss_seeds", "stops"):
        if opts[k] < 1:
            raise UserError(f"--{k.replace('_', '-')} must be at least 1")
    if opts["soak_minutes"] <= 0:
        raise UserError("--soak-minutes must be positive")
    if not 0 < args.loss_percent < 100:
        raise UserError("--loss-percent must lie in (0, 100)")
    opts["loss_percent"] = float(args.loss_percent)
    opts["loss_share_rate"] = args.loss_share_rate
    opts["fuzz_accepted_sensor"] = args.fuzz_accepted_sensor
    model_dir = os.path.abspath(args.model_dir or default_bundle_path())
    manifest = read_manifest(model_dir)
    cfg = resolve_world(DemoConfig(model_dir=model_dir, num_objects=opts["objects"], seed=args.seed), manifest)
    domain = args.domain
    if domain is None:
        env_d = os.environ.get("ROS_DOMAIN_ID", "").strip()
        domain = int(env_d) if env_d.isdigit() else 201 + os.getpid() % 30
    if not 0 <= domain <= 232:
        raise UserError(f"--domain must be 0..232, got {domain}")
    log_dir = args.log_dir or tempfile.mkdtemp(prefix="m2vae_reliability_")
    os.makedirs(log_dir, exist_ok=True)
    profile = share_path("config", "fastdds_shm.xml")
    ctx = {"model_dir": model_dir, "manifest_path": os.path.join(model_dir, "manifest.json"),
           "class_names": list(manifest.get("class_names") or []), "objects": list(cfg.objects), "world": cfg.world,
           "seed": args.seed, "tour": len(cfg.objects) * 5.0 + 1.0, "log_dir": log_dir,
           "fusion_yaml": share_path("config", "fusion.yaml"), "sim_yaml": share_path("config", "sim_world.yaml"),
           "host_env": {"ROS_DOMAIN_ID": str(domain), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
                        "FASTDDS_DEFAULT_PROFILES_FILE": profile if os.path.isfile(profile) else "",
                        "OMP_NUM_THREADS": "1"},
           "loss_domain": (domain + 100) % 233}
    os.environ.update({"ROS_DOMAIN_ID": str(domain), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"})
    print(f"bench reliability: {'quick' if args.quick else 'full'} run; model {manifest['model_id']} "
          f"({cfg.world} world, {len(cfg.objects)} objects); ROS_DOMAIN_ID={domain}; logs in {log_dir}; "
          f"load average {load_average()} (a shared machine: timings are noisy)", flush=True)
    say = lambda s: print(s, flush=True)  # noqa: E731
    result = {"machine": machine_info(), "options": opts, "quick": bool(args.quick), "domain": domain,
              "model_id": manifest["model_id"], "objects": list(cfg.objects), "log_dir": log_dir}
    t_start = time.monotonic()
    funcs = {"fuzz": part_fuzz, "restart": part_restart, "loss": part_loss, "soak": part_soak, "stops": part_stops}
    for part in PARTS:
        if part in skip:
            continue
        t = time.monotonic()
        try:
            result[part] = funcs[part](ctx, opts, say)
        except RuntimeError as exc:
            say(f"{part}: failed: {exc}")
            result[part] = {"error": str(exc)}
        result[part]["seconds"] = round(time.monotonic() - t, 1)
        if args.json:
            write_json(args.json, result)
    result["seconds"] = round(time.monotonic() - t_start, 1)
    result["load_average_end"] = load_average()
    result["targets"] = targets_of(result)
    print(format_report(result))
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


def targets_of(res: dict) -> list:
    rows = []
    fz = res.get("fuzz") or {}
    if "with_fuzz" in fz:
        w, f = fz["without_fuzz"], fz["with_fuzz"]
        rows.append(target("fuzz: hostile messages sent", fz.get("sent"), ">=", 10000,
                           detail="--quick sends fewer" if res.get("quick") else ""))
        rows.append(target("fuzz: crashed nodes", len(f["crashed"]), "<=", 0))
        rows.append(target("fuzz: corrupt outputs", f["corrupt_outputs"], "<=", 0))
        rows.append(target("fuzz: internal_error drops", f["internal_errors"], "<=", 0))
        d = None if f["mean_accuracy"] is None or w["mean_accuracy"] is None else \
            round(100 * abs(f["mean_accuracy"] - w["mean_accuracy"]), 1)
        rows.append(target("fuzz: |accuracy with - without| (points)", d, "<=", 0.0))
    rs = res.get("restart") or {}
    if "spoofed_drops" in rs:
        rows.append(target("restart: full accuracy after up", rs.get("full_accuracy_after_up_s"), "<=", 10.0, " s"))
        rows.append(target("restart: spoofed drops of own evidence", rs["spoofed_drops"], "<=", 0))
    ls = (res.get("loss") or {}).get("summary")
    if ls:
        keys = list(ls)
        a0, a1 = ls[keys[0]]["mean_accuracy"], ls[keys[-1]]["mean_accuracy"]
        rows.append(target(f"loss {keys[-1]} %: accuracy drop (points)",
                           None if a0 is None or a1 is None else round(100 * (a0 - a1), 1), "<=", 2.0))
        rows.append(target(f"loss {keys[-1]} %: peer-evidence age p99", ls[keys[-1]]["evidence_age_p99_s_max"], "<=",
                           0.5, " s"))
    st = res.get("stops") or {}
    if "n" in st:
        rows.append(target("stops: exit status 0", st["exit_0"], ">=", st["n"], f" of {st['n']}"))
        rows.append(target("stops: tracebacks", st["tracebacks"], "<=", 0))
    return rows


def format_report(res: dict) -> str:
    out = []
    fz = res.get("fuzz") or {}
    if "with_fuzz" in fz:
        body = []
        for label in ("without_fuzz", "with_fuzz"):
            r = fz[label]
            body.append([label.replace("_", " "), fmt(r["mean_accuracy"], 3),
                         " ".join(fmt(v, 2) for v in r["accuracy"].values()), len(r["crashed"]),
                         fmt(r["corrupt_outputs"]), fmt(r["internal_errors"]),
                         sum(_prefix_sum(d, "dropped.") for d in r["dropped"].values()),
                         (r.get("fuzzer") or {}).get("sent", 0)])
        out.append(table(["fuzz (3 agents)", "accuracy", "per agent", "crashed", "corrupt out", "internal err",
                          "drops counted*", "hostile sent"], body, "Fuzz"))
        out.append("  * over the 3 agents: every agent receives each hostile peer latent, a sensor message goes to one")
        bys = (fz["with_fuzz"].get("fuzzer") or {}).get("by_source", {})
        if bys:
            out.append("  hostile sent by source: " + ", ".join(f"{k} {v}" for k, v in sorted(bys.items())) +
                       "; extra drops counted per agent: " +
                       ", ".join(f"{a} {v}" for a, v in fz["dropped_extra"].items()))
    rs = res.get("restart") or {}
    if rs and "error" not in rs:
        out.append(table(["restart (SIGKILL + start)", "value"], [
            ["node up after start (s)", fmt(rs.get("up_after_restart_s"), 1)],
            ["first belief after up (s)", fmt(rs.get("first_belief_after_up_s"), 1)],
            ["full accuracy after up (s)", fmt(rs.get("full_accuracy_after_up_s"), 1) +
             (f" (not within {fmt(rs.get('observed_after_up_s'), 0)} s)"
              if rs.get("full_accuracy_after_up_s") is None else "")],
            ["accuracy before kill", f"{fmt(rs.get('accuracy_before_kill'), 2)} over "
                                     f"{rs.get('objects_held_before_kill')} objects"],
            ["spoofed drops (own evidence)", fmt(rs.get("spoofed_drops"))],
            ["crashed / corrupt outputs", f"{len(rs.get('crashed', []))} / {fmt(rs.get('corrupt_outputs'))}"]],
            "Restart"))
    ls = res.get("loss") or {}
    if "runs" in ls:
        body = [[r["seed"], f"{r['loss_percent']:g} %", fmt(r["mean_accuracy"], 3),
                 fmt((r.get("arrival_age_s") or {}).get("p50"), 3), fmt((r.get("arrival_age_s") or {}).get("p99"), 3),
                 fmt((r["evidence_age_s"] or {}).get("p99"), 3),
                 r["peer_latents_received"], sum(r["nft_dropped_packets"].values()) if r["nft_dropped_packets"]
                 else 0] for r in ls["runs"]]
        out.append(table(["seed", "loss", "accuracy", "arrival age p50 s", "arrival age p99 s", "held age p99 s",
                          "peer latents", "nft drops"], body,
                         "Loss between network namespaces"))
        body = [[f"{k} %", v["seeds"], f"{fmt(v['mean_accuracy'], 3)} ± {fmt(v.get('accuracy_ci95'), 3)}",
                 f"{fmt(v['evidence_age_p99_s_mean'], 3)} ± {fmt(v.get('evidence_age_p99_s_ci95'), 3)}",
                 fmt(v["evidence_age_p99_s_max"], 3)] for k, v in (ls.get("summary") or {}).items()]
        out.append(table(["loss", "seeds", "accuracy (mean ± 95 %)", "held age p99 s (mean ± 95 %)",
                          "held age p99 s (worst)"], body, "Loss: over seeds"))
    elif "skipped" in ls:
        out.append(f"Loss between network namespaces: skipped: {ls['skipped']}")
    sk = res.get("soak") or {}
    if "rss_growth_mb" in sk:
        lt = sk.get("latency_trend") or {}
        out.append(table(["soak (8 agents)", "value"], [
            ["minutes", fmt(sk["duration_s"] / 60, 1)],
            ["RSS growth max over agents (MB)", fmt(sk.get("rss_growth_mb_max"), 1) +
             f" over {fmt(sk.get('rss_span_min'), 1)} min"],
            ["  of which after the first minute (MB)", fmt(sk.get("rss_growth_after_first_minute_mb_max"), 1)],
            ["latency p50 first minute (ms)", fmt(lt.get("first_minute_p50_ms"), 1)],
            ["latency p50 last minute (ms)", fmt(lt.get("last_minute_p50_ms"), 1)],
            ["crashed / corrupt outputs", f"{len(sk.get('crashed', []))} / {fmt(sk.get('corrupt_outputs'))}"]],
            "Soak"))
    st = res.get("stops") or {}
    if "summary" in st:
        body = [[k, v["n"], v["exit_0"], " ".join(f"{c}x{n}" for c, n in sorted(v["exit_codes"].items())),
                 v["tracebacks"], v["not_ready"], fmt(v["stop_s_max"], 1)] for k, v in st["summary"].items()]
        out.append(table(["program/signal", "stops", "exit 0", "exit statuses", "tracebacks", "not ready",
                          "max stop s"], body, "Stops"))
    for part in PARTS:
        if "error" in (res.get(part) or {}):
            out.append(f"{part}: failed: {res[part]['error']}")
    if res.get("targets"):
        out.append(targets_table(res["targets"]))
    out.append(f"({fmt(res.get('seconds'), 0)} s; load average at the end {res.get('load_average_end')})")
    return "\n\n".join(out)


if __name__ == "__main__":
    from m2vae_fusion.benchmarks.common import main_for

    sys.exit(main_for(__name__, HELP, configure, run))
