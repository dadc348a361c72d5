"""Merged ONNX chain graphs of a model bundle (format v2, docs/formats.md "Chains"), built from the bundle's own
per-network ONNX files by graph composition (no torch, no retraining: the weights are copied, not re-exported).

In-place fusion (Korthals et al., FUSION 2019, Eq. 18) of an observation of ``m`` into a belief ``z`` that holds the
slots ``H`` is ``z* = mean of q_S(x_m, f(H \\ {m}))`` with ``S = H ∪ {m}`` and ``f`` the M2VAE decoder means. A peer
merge (the same equation applied to latents) re-encodes the union ``S = H ∪ H'``. Two graphs serve every such chain:

- ``decode`` chain of a subset ``K``: ``z`` (N, Dz) → one output ``<m>`` (N, D*) per ``m ∈ K`` (the decoders
  ``p_m(x_m | z)`` of K side by side, one session run instead of ``|K|``);
- ``encode`` chain of a subset ``S``: one input ``<m>`` (N, D*) per slot ``m ∈ S`` (per-slot features, so several
  observations of one slot can be combined before the re-encode) → ``mean``, ``log_variance`` (N, Dz) of the subset
  encoder ``q_S`` and, when the bundle has a class-belief head, ``probabilities`` (N, C) of the head on ``mean``.

An observation therefore costs 2 session runs (decode the held slots, encode the union; 1 for a new belief) after the
β-VAE encoder, instead of ``|H \\ {m}| + 2``; a peer merge decodes both latents in one batched run (N = 2).
Since the encode chain's inputs are features, it depends on the union S only, not on which slots were held.

File names: ``chain_decode_<key>.onnx`` and ``chain_encode_<key>.onnx`` (key: modality names joined with ``+`` in
modality order). Building needs the ``onnx`` package (imported here only); loading needs onnxruntime only.
"""
from __future__ import annotations

import os
from typing import Dict, Mapping, Optional, Sequence

DECODE = "decode"
ENCODE = "encode"


def chain_file(kind: str, key: str) -> str:
    """File name of the ``kind`` (``"decode"`` | ``"encode"``) chain of subset ``key``."""
    return f"chain_{kind}_{key}.onnx"


def _component(onnx, model, prefix: str, rename: Mapping[str, str]):
    """Nodes and initializers of ``model``'s graph with every name prefixed, then its boundary names in ``rename``
    (original name → name in the merged graph) wired to the merged graph's names."""
    g = onnx.compose.add_prefix_graph(model.graph, prefix)
    wired = {prefix + k: v for k, v in rename.items()}
    nodes = []
    for n in g.node:
        n = onnx.NodeProto.FromString(n.SerializeToString())
        for i, name in enumerate(n.input):
            if name in wired:
                n.input[i] = wired[name]
        for i, name in enumerate(n.output):
            if name in wired:
                n.output[i] = wired[name]
        nodes.append(n)
    init_names = {t.name for t in g.initializer}
    for i in model.graph.input:
        if i.name not in rename and prefix + i.name not in init_names:
            raise ValueError(f"input {i.name!r} of {model.graph.name!r} is not wired")
    return nodes, list(g.initializer), list(g.sparse_initializer)


def _merged_model(onnx, parts, inputs, outputs, name: str):
    """One model from ``parts`` = [(model, prefix, rename)], with graph ``inputs``/``outputs`` value infos."""
    nodes, inits, sparse = [], [], []
    opsets: Dict[str, int] = {}
    ir = 0
    for model, prefix, rename in parts:
        n, i, s = _component(onnx, model, prefix, rename)
        nodes += n
        inits += i
        sparse += s
        for o in model.opset_import:
            opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
        ir = max(ir, model.ir_version)
    graph = onnx.helper.make_graph(nodes, name, inputs, outputs, inits, sparse_initializer=sparse or None)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid(d, v)
                                                         for d, v in sorted(opsets.items())],
                                   producer_name="m2vae_fusion.core.chains")
    model.ir_version = ir
    onnx.checker.check_model(model)
    return model


def build_chains(bundle_dir: str, modalities: Sequence[str], subsets: Sequence[str], networks: Mapping,
                 feature_dim: int, latent_dim: int, n_classes: Optional[int], out_dir: Optional[str] = None
                 ) -> Dict[str, Dict[str, str]]:
    """Write the decode and encode chains of every subset, composed from the bundle's network files.

    Args:
        bundle_dir: directory holding the network files named in ``networks`` (the manifest's block).
        modalities: the bundle's modality order. subsets: subset keys (``"camera+lidar"``, …).
        networks: the manifest's ``networks`` block (``decoder``, ``subset_encoder``, ``head``).
        feature_dim: D*. latent_dim: Dz. n_classes: C, or None without a head (then no ``probabilities`` output).
        out_dir: where to write the chain files (default ``bundle_dir``).

    Returns:
        the manifest's ``chains`` block: ``{"decode": {key: file}, "encode": {key: file}}``.

    Raises:
        ValueError: a network file whose inputs/outputs are not the documented ones.
    """
    import onnx

    out_dir = out_dir or bundle_dir
    float_t = onnx.TensorProto.FLOAT

    def vi(name, dim):
        return onnx.helper.make_tensor_value_info(name, float_t, ["N", int(dim)])

    def load(fname):
        return onnx.load(os.path.join(bundle_dir, fname))

    decoders = {m: load(networks["decoder"][m]) for m in modalities}
    head = load(networks["head"]) if networks.get("head") and n_classes else None
    block: Dict[str, Dict[str, str]] = {DECODE: {}, ENCODE: {}}
    for key in subsets:
        mods = [m for m in modalities if m in key.split("+")]
        # decode chain: z → one feature per slot
        parts = [(decoders[m], f"dec_{m}/", {"z": "z", "mean": m}) for m in mods]
        model = _merged_model(onnx, parts, [vi("z", latent_dim)], [vi(m, feature_dim) for m in mods],
                              f"decode_{key}")
        fname = chain_file(DECODE, key)
        onnx.save(model, os.path.join(out_dir, fname))
        block[DECODE][key] = fname
        # encode chain: per-slot features → subset encoder (→ head)
        enc = load(networks["subset_encoder"][key])
        parts = [(enc, "enc/", {**{m: m for m in mods}, "mean": "mean", "log_variance": "log_variance"})]
        outputs = [vi("mean", latent_dim), vi("log_variance", latent_dim)]
        if head is not None:
            parts.append((head, "head/", {"z": "mean", "probabilities": "probabilities"}))
            outputs.append(vi("probabilities", n_classes))
        model = _merged_model(onnx, parts, [vi(m, feature_dim) for m in mods], outputs, f"encode_{key}")
        fname = chain_file(ENCODE, key)
        onnx.save(model, os.path.join(out_dir, fname))
        block[ENCODE][key] = fname
    return block
