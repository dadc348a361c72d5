"""Offline training pipeline: β-VAEs → features → M2VAE → class-belief head → ONNX bundle.

Stages (``m2vae-fusion train --stage ...``):

1. ``betavae``: one β-VAE per modality on the preprocessed sensor data (paper Sec. V-D), then the β-VAE latent
   means of every split are cached (``features.npz``): the M2VAE's inputs.
2. ``m2vae``: the M2VAE on those features with the recursive objective and the re-encoding loss
   (:func:`m2vae_fusion.training.losses.m2vae_loss`).
3. ``head``: one class-belief head on the latent means of all subsets, temperature-calibrated on the val split.
4. ``export``: the ONNX bundle (docs/formats.md) with probe parity.

A run directory holds ``checkpoints/*.pt`` (one per network, updated every epoch, resumable with ``--resume``),
``features.npz``, ``metrics.jsonl`` (one JSON object per epoch and stage) and ``config.yaml`` (the resolved config).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Callable, Dict, Mapping, Optional, Sequence

import numpy as np
import torch

from m2vae_fusion.errors import UserError
from m2vae_fusion.files import write_json
from m2vae_fusion.training import config as cfgmod
from m2vae_fusion.training.data import Split, class_names_of, load_dataset
from m2vae_fusion.training import objectives
from m2vae_fusion.training.losses import betavae_loss
from m2vae_fusion.training.networks import M2VAE, BetaVAE, ClassHead, subset_key

STAGES = ("betavae", "m2vae", "head", "export")
_SEED_OFFSET = {"betavae": 0, "m2vae": 1000, "head": 2000}
# smallest feature scale of the β-VAE standardisation: a dimension that barely varies over the train split is not
# amplified beyond 100x (float32 differences between torch and onnxruntime grow with 1/scale; parity tolerance 1e-4)
STD_FLOOR = 1e-2


def _progress(iterable, desc: str, total: Optional[int] = None):
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, total=total, leave=False, mininterval=1.0, dynamic_ncols=True,
                disable=os.environ.get("M2VAE_NO_PROGRESS") == "1")


def _batches(n: int, batch_size: int, rng: Optional[np.random.Generator]):
    idx = rng.permutation(n) if rng is not None else np.arange(n)
    for a in range(0, n, batch_size):
        yield idx[a:a + batch_size]


class Run:
    """One training run: data, config, run directory and the stage implementations.

    Args:
        run_dir: checkpoints, metrics and cached features go here.
        config: validated config (:func:`m2vae_fusion.training.config.load_config`).
        data_dir: data set directory (needed by ``betavae``; the later stages use ``features.npz``).
        resume: continue from the checkpoints in ``run_dir`` (finished stages are skipped).
        log: printer for one-line messages.
    """

    def __init__(self, run_dir: str, config: Mapping, data_dir: Optional[str] = None, resume: bool = False,
                 log: Callable[[str], None] = print):
        self.run_dir = run_dir
        self.cfg = dict(config)
        self.data_dir = data_dir
        self.resume = resume
        self.log = log
        self.mods = list(self.cfg["modalities"])
        self.ckpt_dir = os.path.join(run_dir, "checkpoints")
        os.makedirs(self.ckpt_dir, exist_ok=True)
        self.metrics_path = os.path.join(run_dir, "metrics.jsonl")
        self._data = None
        torch.set_num_threads(int(self.cfg.get("threads", 2)))

    # ------------------------------------------------------------------------------------------------ utilities
    def ckpt(self, name: str) -> str:
        return os.path.join(self.ckpt_dir, f"{name}.pt")

    def _log_metrics(self, record: Mapping) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def _save(self, name: str, obj: Mapping) -> None:
        tmp = self.ckpt(name) + ".tmp"
        torch.save(dict(obj), tmp)
        os.replace(tmp, self.ckpt(name))

    def _load(self, name: str) -> Optional[dict]:
        p = self.ckpt(name)
        if not os.path.isfile(p):
            return None
        try:
            return torch.load(p, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise UserError(f"{p}: unreadable checkpoint ({exc})") from None

    def _seed(self, stage: str, extra: int = 0) -> np.random.Generator:
        s = int(self.cfg["seed"]) + _SEED_OFFSET[stage] + extra
        torch.manual_seed(s)
        return np.random.default_rng(s)

    def data(self):
        if self._data is None:
            if not self.data_dir:
                raise UserError("--data is required for this stage")
            t = time.time()
            self._data = load_dataset(self.data_dir, self.mods,
                                      position_jitter=float(self.cfg.get("position_jitter", 0.0)),
                                      seed=int(self.cfg["seed"]))
            meta, _, splits = self._data
            self.log(f"data {self.data_dir}: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items())
                     + f" samples ({meta.get('source', '?')}), loaded in {time.time() - t:.1f} s")
        return self._data

    def write_config(self) -> None:
        """Write the resolved ``config.yaml`` and, with a data set, ``dataset.json`` (sensors, class names, origin)."""
        import yaml

        from m2vae_fusion.training.data import check_modalities, read_metadata

        with open(os.path.join(self.run_dir, "config.yaml"), "w") as f:
            yaml.safe_dump(self.cfg, f, sort_keys=False)
        if self.data_dir:
            meta = read_metadata(self.data_dir)
            sensors = check_modalities(meta, self.mods, self.data_dir)
            info = {"data_dir": os.path.abspath(self.data_dir), "sensors": sensors,
                    "class_names": class_names_of(meta),
                    "dataset": {"seed": meta.get("seed"), "source": meta.get("source"),
                                "samples": int(sum((meta.get("splits") or {}).values()))}}
            if meta.get("world"):  # the simulated world (absent: easy, or not simulated); the demo tours it
                info["dataset"]["world"] = meta["world"]
            write_json(os.path.join(self.run_dir, "dataset.json"), info)

    def dataset_info(self) -> dict:
        p = os.path.join(self.run_dir, "dataset.json")
        if not os.path.isfile(p):
            raise UserError(f"{p}: missing; run the betavae stage with --data first")
        with open(p) as f:
            return json.load(f)

    # ---------------------------------------------------------------------------------------------- β-VAE stage
    def build_betavae(self, m: str, sensors: Mapping, n_classes: int = 0) -> BetaVAE:
        bc = self.cfg["betavae"]
        arch = {k: bc[k] for k in ("camera_channels", "lidar_channels", "trunk_hidden", "reflectance_hidden")}
        return BetaVAE(m, sensors[m], self.cfg["feature_dim"], arch, aux_classes=n_classes)

    def stage_betavae(self) -> Dict[str, float]:
        """Train one β-VAE per modality (paper Eq. 1, β = β_norm·D_x/D_z; Sec. V-D), then cache the features."""
        meta, sensors, splits = self.data()
        self.write_config()
        bc = self.cfg["betavae"]
        names = class_names_of(meta)
        n_classes = len(names) if names and bc["aux_weight"] > 0 else 0
        out = {}
        for j, m in enumerate(self.mods):
            epochs = cfgmod.epochs_for(self.cfg, m)
            self._seed("betavae", j)
            vae = self.build_betavae(m, sensors, n_classes)
            opt = torch.optim.Adam(vae.parameters(), lr=bc["lr"])
            start = 0
            ck = self._load(f"betavae_{m}") if self.resume else None
            if ck is not None:
                vae.load_checkpoint_state(ck["state"], with_aux=vae.aux is not None)
                vae.set_standardization(np.zeros(vae.latent_dim), np.ones(vae.latent_dim))  # training space
                opt.load_state_dict(ck["opt"])
                start = int(ck["epoch"])
            tr, va = splits["train"], splits["val"]
            xtr, ytr = tr.inputs[m][tr.present[:, j]], tr.label[tr.present[:, j]]
            xva, yva = va.inputs[m][va.present[:, j]], va.label[va.present[:, j]]
            if len(xtr) == 0:
                raise UserError(f"{self.data_dir}: no training sample has modality {m!r}")
            epochs = cfgmod.stage_epochs(epochs, bc["min_steps"], len(xtr), bc["batch_size"])
            t0 = time.time()
            val = float("nan")
            bar = _progress(range(start, epochs), f"β-VAE {m}", total=epochs - start)
            for epoch in bar:
                rng = np.random.default_rng(int(self.cfg["seed"]) + 17 * epoch + j)
                vae.train()
                tot, cnt, rec_s, kl_s = 0.0, 0, 0.0, 0.0
                nb = max(1, math.ceil(len(xtr) / bc["batch_size"]))
                for b, idx in enumerate(_batches(len(xtr), bc["batch_size"], rng)):
                    x = torch.from_numpy(xtr[idx])
                    # KL warm-up (Sønderby et al. 2016, cited by the paper Sec. V-B): β ramps up linearly
                    ramp = min(1.0, (epoch + (b + 1) / nb) / bc["warmup_epochs"]) if bc["warmup_epochs"] else 1.0
                    parts = betavae_loss(vae, x, cfgmod.beta_norm_for(self.cfg, m) * ramp, labels=torch.from_numpy(ytr[idx]),
                                         aux_weight=bc["aux_weight"])
                    loss = parts["loss"].mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    tot += loss.item() * len(idx)
                    rec_s += float(parts["rec"].detach().sum())
                    kl_s += float(parts["kl"].detach().sum())
                    cnt += len(idx)
                val = self._betavae_val(vae, xva, bc)
                rec = {"stage": "betavae", "modality": m, "epoch": epoch + 1, "train_loss": tot / cnt,
                       "train_rec": rec_s / cnt, "train_kl": kl_s / cnt, "val_loss": val,
                       "seconds": round(time.time() - t0, 2)}
                if vae.aux is not None:
                    rec["val_aux_acc"] = self._aux_acc(vae, xva, yva)
                self._log_metrics(rec)
                bar.set_postfix(loss=f"{tot / cnt:.2f}", val=f"{val:.2f}")
                self._save(f"betavae_{m}", {"state": vae.state_dict(), "opt": opt.state_dict(), "epoch": epoch + 1,
                                            "epochs": epochs, "modality": m})
            if ck is not None and start >= epochs:
                val = self._betavae_val(vae, xva, bc)
            out[m] = val
            self.log(f"β-VAE {m}: {epochs} epochs, val -ELBO {val:.3f} per sample ({time.time() - t0:.0f} s)")
        self.cache_features(sensors, splits)
        return out

    @torch.no_grad()
    def _betavae_val(self, vae: BetaVAE, x: np.ndarray, bc: Mapping) -> float:
        if len(x) == 0:
            return float("nan")
        vae.eval()
        tot = 0.0
        for idx in _batches(len(x), 512, None):
            tot += float(betavae_loss(vae, torch.from_numpy(x[idx]), cfgmod.beta_norm_for(self.cfg, vae.modality),
                                     sample=False)["loss"].sum())
        return tot / len(x)

    @torch.no_grad()
    def _aux_acc(self, vae: BetaVAE, x: np.ndarray, y: np.ndarray) -> float:
        """Top-1 class accuracy of the auxiliary read-out on val (a sensor that senses one of three binary
        attributes tops out at 1/4)."""
        keep = y >= 0
        if not keep.any():
            return float("nan")
        vae.eval()
        pred = np.concatenate([vae.aux(vae.encode_raw(torch.from_numpy(x[keep][idx]))[0]).argmax(1).numpy()
                               for idx in _batches(int(keep.sum()), 512, None)])
        return float((pred == y[keep]).mean())

    def load_betavaes(self, sensors: Mapping) -> Dict[str, BetaVAE]:
        out = {}
        for m in self.mods:
            ck = self._load(f"betavae_{m}")
            if ck is None:
                raise UserError(f"{self.ckpt(f'betavae_{m}')}: missing; run the betavae stage first")
            v = self.build_betavae(m, sensors)
            v.load_checkpoint_state(ck["state"])
            v.eval()
            out[m] = v
        return out

    @torch.no_grad()
    def standardize_betavaes(self, sensors: Mapping, train: Split) -> Dict[str, BetaVAE]:
        """Set every β-VAE's feature standardisation from the training split (``betavae.standardize``: the mean and
        standard deviation of its latent means per dimension, floored at ``STD_FLOOR``; false: the identity) and
        store it in the β-VAE checkpoints, so the exported encoders return standardised features.

        Why (not in the paper): the M2VAE's Gaussian likelihood with fixed variance (Eq. 83, σ² = 1/2) weighs every
        feature dimension by its raw variance; an unsupervised β-VAE leaves near-collapsed dimensions (standard
        deviation 0.01-0.05) that still carry attribute evidence, which the M2VAE then ignores.
        """
        vaes = self.load_betavaes(sensors)
        on = bool(self.cfg["betavae"].get("standardize", True))
        for j, m in enumerate(self.mods):
            v = vaes[m]
            d = v.latent_dim
            x = train.inputs[m][train.present[:, j]]
            if on and len(x) > 1:
                v.set_standardization(np.zeros(d), np.ones(d))
                mu = np.concatenate([v.encode_raw(torch.from_numpy(x[idx]))[0].numpy()
                                     for idx in _batches(len(x), 512, None)])
                v.set_standardization(mu.mean(0), np.maximum(mu.std(0), STD_FLOOR))
            else:
                v.set_standardization(np.zeros(d), np.ones(d))
            ck = self._load(f"betavae_{m}")
            ck["state"] = {**ck["state"], "feature_shift": v.feature_shift.clone(),
                           "feature_scale": v.feature_scale.clone()}
            self._save(f"betavae_{m}", ck)
            if on:
                self.log(f"β-VAE {m}: features standardised (latent-mean std per dimension "
                         + " ".join(f"{float(s):.3g}" for s in v.feature_scale) + ")")
        return vaes

    def standardization_matches(self) -> bool:
        """Whether the β-VAE checkpoints' feature standardisation agrees with ``betavae.standardize`` (identity
        when false, set when true); False for a run whose features must be cached again."""
        on = bool(self.cfg["betavae"].get("standardize", True))
        for m in self.mods:
            ck = self._load(f"betavae_{m}")
            if ck is None:
                return False
            st = ck["state"]
            identity = ("feature_scale" not in st
                        or (bool(torch.all(st["feature_scale"] == 1)) and bool(torch.all(st["feature_shift"] == 0))))
            if identity == on:
                return False
        return True

    @torch.no_grad()
    def cache_features(self, sensors: Mapping, splits: Mapping[str, Split]) -> None:
        """β-VAE features (standardised latent means, :meth:`standardize_betavaes`) of every split (the M2VAE's
        inputs, paper Sec. V-D) → ``features.npz``."""
        vaes = self.standardize_betavaes(sensors, splits["train"])
        arrays = {}
        for s, sp in splits.items():
            for j, m in enumerate(self.mods):
                feats = np.zeros((len(sp), self.cfg["feature_dim"]), np.float32)
                for idx in _batches(len(sp), 512, None):
                    feats[idx] = vaes[m].encode(torch.from_numpy(sp.inputs[m][idx]))[0].numpy()
                feats[~sp.present[:, j]] = 0.0
                arrays[f"{s}/{m}"] = feats
            arrays[f"{s}/present"] = sp.present
            arrays[f"{s}/label"] = sp.label
        tmp = os.path.join(self.run_dir, "features.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, os.path.join(self.run_dir, "features.npz"))

    def features(self) -> Dict[str, Dict[str, np.ndarray]]:
        p = os.path.join(self.run_dir, "features.npz")
        if not os.path.isfile(p):
            raise UserError(f"{p}: missing; run the betavae stage first")
        z = np.load(p)
        out: Dict[str, Dict[str, np.ndarray]] = {}
        for k in z.files:
            s, name = k.split("/", 1)
            out.setdefault(s, {})[name] = z[k]
        return out

    # ---------------------------------------------------------------------------------------------- M2VAE stage
    def build_m2vae(self) -> M2VAE:
        mc = self.cfg["m2vae"]
        # the config's ``objective`` picks the network and loss (m2vae_fusion.training.objectives; issue 11)
        return objectives.get(self.cfg.get("objective", "m2vae")).build(
            self.mods, {m: self.cfg["feature_dim"] for m in self.mods}, self.cfg["latent_dim"], mc["hidden"],
            mc["fusion_hidden"])

    def _objective_loss(self, model, xs, present, **kw):
        """The loss of the config's ``objective`` (``m2vae``: :func:`m2vae_loss`)."""
        return objectives.get(self.cfg.get("objective", "m2vae")).loss(model, xs, present, **kw)

    def _m2_kwargs(self) -> dict:
        mc = self.cfg["m2vae"]
        return {"beta_norm": mc["beta_norm"], "alpha": mc["alpha"], "alpha_reenc": mc["alpha_reenc"]}

    def stage_m2vae(self) -> Dict[str, float]:
        """Train the M2VAE on the β-VAE features (paper Eq. 16-19, derivation Eq. 83)."""
        feats = self.features()
        mc = self.cfg["m2vae"]
        self._seed("m2vae")
        torch.set_num_threads(1)  # small MLPs: a second thread only adds synchronisation cost
        model = self.build_m2vae()
        opt = torch.optim.Adam(model.parameters(), lr=mc["lr"])
        start = 0
        ck = self._load("m2vae") if self.resume else None
        if ck is not None:
            model.load_state_dict(ck["state"])
            opt.load_state_dict(ck["opt"])
            start = int(ck["epoch"])
        tr = feats["train"]
        n = tr["label"].shape[0]
        xs_np = {m: tr[m] for m in self.mods}
        pres = torch.from_numpy(tr["present"])
        t0 = time.time()
        epochs = cfgmod.stage_epochs(mc["epochs"], mc["min_steps"], n, mc["batch_size"])
        val = {}
        bar = _progress(range(start, epochs), "M2VAE", total=epochs - start)
        for epoch in bar:
            rng = np.random.default_rng(int(self.cfg["seed"]) + 31 * epoch + 1)
            model.train()
            tot, cnt = 0.0, 0
            for idx in _batches(n, mc["batch_size"], rng):
                xs = {m: torch.from_numpy(xs_np[m][idx]) for m in self.mods}
                parts = self._objective_loss(model, xs, pres[idx], **self._m2_kwargs())
                opt.zero_grad(set_to_none=True)
                parts["loss"].backward()
                opt.step()
                tot += float(parts["loss"].detach()) * len(idx)
                cnt += len(idx)
            val = self._m2vae_val(model, feats["val"])
            self._log_metrics({"stage": "m2vae", "epoch": epoch + 1, "train_loss": tot / cnt, **val,
                               "seconds": round(time.time() - t0, 2)})
            bar.set_postfix(loss=f"{tot / cnt:.3f}", val=f"{val['val_loss']:.3f}")
            self._save("m2vae", {"state": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch + 1,
                                 "epochs": epochs})
        if not val:
            val = self._m2vae_val(model, feats["val"])
        self.log(f"M2VAE: {epochs} epochs, val loss {val['val_loss']:.4f}, "
                 + ", ".join(f"{k.split('/', 1)[1]} {v:.3g}" for k, v in val.items() if k.startswith("val_reenc/"))
                 + f" ({time.time() - t0:.0f} s)")
        return val

    @torch.no_grad()
    def _m2vae_val(self, model: M2VAE, split: Mapping[str, np.ndarray]) -> Dict[str, float]:
        model.eval()
        n = split["label"].shape[0]
        xs = {m: torch.from_numpy(split[m]) for m in self.mods}
        kw = self._m2_kwargs()
        kw["alpha_reenc"] = max(kw["alpha_reenc"], 1e-12)  # always report the re-encoding divergence
        parts = self._objective_loss(model, xs, torch.from_numpy(split["present"]), sample=False, **kw)
        out = {"val_loss": float(parts["loss"])} if n else {"val_loss": float("nan")}
        for k, v in parts.items():
            if k.startswith(("rec/", "reenc/")):
                out[f"val_{k}"] = float(v)
        return out

    def load_m2vae(self) -> M2VAE:
        ck = self._load("m2vae")
        if ck is None:
            raise UserError(f"{self.ckpt('m2vae')}: missing; run the m2vae stage first")
        model = self.build_m2vae()
        model.load_state_dict(ck["state"])
        model.eval()
        return model

    # ----------------------------------------------------------------------------------------------- head stage
    @torch.no_grad()
    def embeddings(self, model: M2VAE, split: Mapping[str, np.ndarray]):
        """Latent means of every subset for the samples holding that subset: ``(z, label, subset index)``."""
        zs, ys, ss = [], [], []
        xs = {m: torch.from_numpy(split[m]) for m in self.mods}
        for k, s in enumerate(model.subsets):
            cols = [self.mods.index(m) for m in s]
            keep = np.all(split["present"][:, cols], axis=1)
            if not keep.any():
                continue
            mu, _ = model.encode(s, {m: xs[m][keep] for m in s})
            zs.append(mu.numpy())
            ys.append(split["label"][keep])
            ss.append(np.full(int(keep.sum()), k))
        if not zs:
            return np.zeros((0, model.latent_dim), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(zs), np.concatenate(ys), np.concatenate(ss)

    def stage_head(self) -> Dict[str, float]:
        """Class-belief head on the latent means of all subsets; temperature calibrated on val (NLL)."""
        info = self.dataset_info()
        names = info.get("class_names")
        if not names:
            self.log("head: data set has no class names (unlabelled); no head")
            return {}
        feats = self.features()
        model = self.load_m2vae()
        hc = self.cfg["head"]
        self._seed("head")
        torch.set_num_threads(1)
        ztr, ytr, _ = self.embeddings(model, feats["train"])
        keep = ytr >= 0
        ztr, ytr = ztr[keep], ytr[keep]
        if len(ztr) == 0:
            self.log("head: no labelled training samples; no head")
            return {}
        head = ClassHead(self.cfg["latent_dim"], len(names), hc["hidden"])
        opt = torch.optim.Adam(head.parameters(), lr=hc["lr"])
        zt, yt = torch.from_numpy(ztr), torch.from_numpy(ytr)
        t0 = time.time()
        zva, yva, sva = self.embeddings(model, feats["val"])
        kv = yva >= 0
        zva, yva, sva = zva[kv], yva[kv], sva[kv]
        for epoch in _progress(range(hc["epochs"]), "head"):
            rng = np.random.default_rng(int(self.cfg["seed"]) + 7 * epoch + 2)
            head.train()
            tot = 0.0
            for idx in _batches(len(zt), hc["batch_size"], rng):
                loss = torch.nn.functional.cross_entropy(head(zt[idx]), yt[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tot += loss.item() * len(idx)
            head.eval()
            with torch.no_grad():
                acc = float((head(torch.from_numpy(zva)).argmax(1).numpy() == yva).mean()) if len(zva) else math.nan
            self._log_metrics({"stage": "head", "epoch": epoch + 1, "train_ce": tot / len(zt), "val_acc": acc,
                               "seconds": round(time.time() - t0, 2)})
        temp = calibrate_temperature(head, zva, yva) if len(zva) else 1.0
        head.temperature.fill_(temp)
        out = {"temperature": temp}
        with torch.no_grad():
            pred = head(torch.from_numpy(zva)).argmax(1).numpy() if len(zva) else np.zeros(0)
        for k, s in enumerate(model.subsets):
            sel = sva == k
            if sel.any():
                out[f"val_acc/{subset_key(s)}"] = float((pred[sel] == yva[sel]).mean())
        self._save("head", {"state": head.state_dict(), "n_classes": len(names), "class_names": names,
                            "epoch": hc["epochs"]})
        self._log_metrics({"stage": "head", "final": True, **out})
        self.log("head: T = %.3f, val accuracy " % temp + ", ".join(
            f"{k.split('/', 1)[1]} {v:.3f}" for k, v in out.items() if k.startswith("val_acc/")))
        return out

    def load_head(self) -> Optional[ClassHead]:
        ck = self._load("head")
        if ck is None:
            return None
        head = ClassHead(self.cfg["latent_dim"], int(ck["n_classes"]), self.cfg["head"]["hidden"])
        head.load_state_dict(ck["state"])
        head.eval()
        return head

    # --------------------------------------------------------------------------------------------- export stage
    def stage_export(self, out_dir: str, seed: int = 0) -> str:
        from m2vae_fusion.training.export import export_bundle

        info = self.dataset_info()
        sensors = info["sensors"]
        vaes = self.load_betavaes(sensors)
        model = self.load_m2vae()
        head = self.load_head()
        names = info.get("class_names") if head is not None else None
        feats = self.features()
        probe = {"features": {m: feats["test"][m][:4] for m in self.mods}} if "test" in feats else None
        if probe is not None and feats["test"]["label"].shape[0] < 4:
            probe = None
        training = {"config": self.cfg, "metrics": self.final_metrics(), "dataset": info.get("dataset")}
        export_bundle(out_dir, vaes, model, head, sensors=sensors, class_names=names, training=training,
                      probe_data=probe, seed=seed, bounds_data=info.get("data_dir"))
        return out_dir

    def final_metrics(self) -> Dict[str, object]:
        """Last logged figures of each stage (from ``metrics.jsonl``)."""
        out: Dict[str, object] = {}
        if not os.path.isfile(self.metrics_path):
            return out
        with open(self.metrics_path) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                if r.get("stage") == "betavae":
                    out[f"betavae/{r['modality']}/val_loss"] = r.get("val_loss")
                    out[f"betavae/{r['modality']}/epochs"] = r.get("epoch")
                elif r.get("stage") == "m2vae":
                    out["m2vae/epochs"] = r.get("epoch")
                    for k, v in r.items():
                        if k.startswith("val_"):
                            out[f"m2vae/{k}"] = v
                elif r.get("stage") == "head" and r.get("final"):
                    for k, v in r.items():
                        if k not in ("stage", "final"):
                            out[f"head/{k}"] = v
        return out


def calibrate_temperature(head: ClassHead, z: np.ndarray, y: np.ndarray) -> float:
    """Temperature scaling (Guo et al. 2017): the ``T`` minimising the val NLL of ``softmax(logits / T)``, found by
    a golden-section search over ``log T ∈ [log 0.05, log 20]``."""
    with torch.no_grad():
        logits = head(torch.from_numpy(z)).double()
    yt = torch.from_numpy(y)

    def nll(logt: float) -> float:
        return float(torch.nn.functional.cross_entropy(logits / math.exp(logt), yt))

    a, b = math.log(0.05), math.log(20.0)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(d)
    return float(math.exp((a + b) / 2))


def export_run(run_dir: str, out_dir: str, seed: Optional[int] = None) -> str:
    """Export the trained networks of ``run_dir`` (its ``config.yaml`` and checkpoints) as a bundle; the probe seed
    defaults to the run's config seed (as the train command's export stage uses)."""
    import yaml

    p = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(p):
        raise UserError(f"{p}: missing; not a training run directory")
    with open(p) as f:
        cfg = cfgmod.validate(yaml.safe_load(f) or {})
    return Run(run_dir, cfg, None, log=lambda s: None).stage_export(out_dir, cfg["seed"] if seed is None else seed)


def run_stages(run: Run, stages: Sequence[str], out_dir: str) -> Dict[str, object]:
    """Run ``stages`` in order; returns the figures of each stage and its wall time."""
    figures: Dict[str, object] = {}
    for st in stages:
        t = time.time()
        if st == "betavae":
            figures["betavae"] = run.stage_betavae()
        elif st == "m2vae":
            figures["m2vae"] = run.stage_m2vae()
        elif st == "head":
            figures["head"] = run.stage_head()
        elif st == "export":
            run.stage_export(out_dir, seed=int(run.cfg["seed"]))
            figures["export"] = out_dir
        figures[f"seconds/{st}"] = round(time.time() - t, 1)
        sys.stdout.flush()
    return figures
