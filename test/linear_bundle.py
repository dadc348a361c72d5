"""A small, exactly analysable model bundle for tests of the runtime (no torch): every network is linear.

M2VAE decoders ``f_m = A_m z + b_m`` with orthogonal ``A_m``; the subset encoder of S returns the mean of
``A_mᵀ (f_m − b_m)`` over m ∈ S, so decode → re-encode is exactly the identity (z_diff = 0) unless ``drift`` adds a
known contraction ``z ↦ (1 − drift) z``. β-VAE encoders are random linear maps of the flattened input; the head is a
softmax over a linear map. Written in the format of docs/formats.md so the real loader reads it: the networks and a
format-v1 manifest first, then (``format_version=2``, the default) upgraded by the exporter's torch-free rebuild,
which adds the merged chain graphs (m2vae_fusion.core.chains) and their probes, and, given ``bounds_data``, the
latent bounds (format v3).
"""
import hashlib
import itertools
import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from m2vae_fusion.core.preprocess import DEFAULT_CONFIGS, MODALITIES, input_shape

CLASS_NAMES = [f"{c}_{s}_{m}" for c in ("red", "green") for s in ("cylinder", "cube") for m in ("matte", "shiny")]


def _save(graph_nodes, inputs, outputs, inits, path):
    graph = helper.make_graph(graph_nodes, os.path.basename(path), inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _vi(name, dims):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", *dims])


def _const(name, arr):
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


def make_linear_bundle(out_dir, feature_dim=4, latent_dim=4, seed=0, drift=0.0, with_head=True,
                       modalities=MODALITIES, configs=None, format_version=2, head="softmax", bounds_data=None):
    """Write a linear bundle to ``out_dir`` and return its path. ``feature_dim`` must equal ``latent_dim``.
    ``format_version=1`` leaves it as a format-v1 bundle (no chains), as bundles were before format v2.
    ``head``: ``"softmax"`` (a valid class-belief head), or a broken one for output-validation tests: ``"sigmoid"``
    (each value in [0, 1], rows not summing to 1) or ``"logits"`` (values outside [0, 1]).
    ``bounds_data`` (raw shard arrays or a data set directory): add ``latent_bounds`` computed from it (format v3)."""
    assert feature_dim == latent_dim
    rng = np.random.default_rng(seed)
    configs = configs or DEFAULT_CONFIGS
    os.makedirs(out_dir, exist_ok=True)
    d = latent_dim
    nets = {"betavae_encoder": {}, "betavae_decoder": {}, "subset_encoder": {}, "decoder": {}, "head": None}
    inputs_meta = {}
    A, b = {}, {}
    for m in modalities:
        shape = input_shape(m, configs[m])
        flat = int(np.prod(shape))
        inputs_meta[m] = {"shape": list(shape), "dtype": "float32", "preprocessing": dict(configs[m])}
        w = rng.normal(0, 1 / np.sqrt(flat), (flat, d))
        fn = f"betavae_{m}_encoder.onnx"
        _save([helper.make_node("Flatten", ["x"], ["xf"], axis=1),
               helper.make_node("MatMul", ["xf", "W"], ["mean"]),
               helper.make_node("MatMul", ["xf", "Wv"], ["lv0"]),
               helper.make_node("Add", ["lv0", "c"], ["log_variance"])],
              [_vi("x", shape)], [_vi("mean", [d]), _vi("log_variance", [d])],
              [_const("W", w), _const("Wv", np.zeros((flat, d))), _const("c", -np.ones(d))],
              os.path.join(out_dir, fn))
        nets["betavae_encoder"][m] = fn
        fn = f"betavae_{m}_decoder.onnx"
        _save([helper.make_node("MatMul", ["z", "W"], ["xf"]),
               helper.make_node("Reshape", ["xf", "s"], ["x"])],
              [_vi("z", [d])], [_vi("x", shape)],
              [_const("W", w.T), numpy_helper.from_array(np.array([-1, *shape], np.int64), "s")],
              os.path.join(out_dir, fn))
        nets["betavae_decoder"][m] = fn
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        A[m], b[m] = q, rng.normal(0, 0.1, d)
        fn = f"m2vae_decoder_{m}.onnx"
        _save([helper.make_node("MatMul", ["z", "At"], ["f0"]), helper.make_node("Add", ["f0", "b"], ["mean"])],
              [_vi("z", [d])], [_vi("mean", [d])], [_const("At", A[m].T), _const("b", b[m])],
              os.path.join(out_dir, fn))
        nets["decoder"][m] = fn
    subsets = [list(s) for k in range(1, len(modalities) + 1) for s in itertools.combinations(modalities, k)]
    for s in subsets:
        key = "+".join(s)
        nodes, inits, terms = [], [], []
        for m in s:
            nodes += [helper.make_node("Sub", [m, f"b_{m}"], [f"c_{m}"]),
                      helper.make_node("MatMul", [f"c_{m}", f"A_{m}"], [f"t_{m}"])]
            inits += [_const(f"b_{m}", b[m]), _const(f"A_{m}", A[m] * (1.0 - drift) / len(s))]
            terms.append(f"t_{m}")
        nodes.append(helper.make_node("Sum", terms, ["mean"]))
        nodes += [helper.make_node("Mul", ["mean", "zero"], ["lv0"]), helper.make_node("Add", ["lv0", "lv"], ["log_variance"])]
        inits += [_const("zero", np.zeros(d)), _const("lv", np.full(d, -2.0 + 0.5 * (3 - len(s))))]
        fn = f"m2vae_encoder_{key}.onnx"
        _save(nodes, [_vi(m, [d]) for m in s], [_vi("mean", [d]), _vi("log_variance", [d])], inits,
              os.path.join(out_dir, fn))
        nets["subset_encoder"][key] = fn
    if with_head:
        fn = "head.onnx"
        last = {"softmax": helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
                "sigmoid": helper.make_node("Sigmoid", ["logits"], ["probabilities"]),
                "logits": helper.make_node("Identity", ["logits"], ["probabilities"])}[head]
        _save([helper.make_node("MatMul", ["z", "W"], ["l0"]), helper.make_node("Add", ["l0", "b"], ["logits"]),
               last],
              [_vi("z", [d])], [_vi("probabilities", [len(CLASS_NAMES)])],
              [_const("W", rng.normal(0, 1, (d, len(CLASS_NAMES)))), _const("b", np.zeros(len(CLASS_NAMES)))],
              os.path.join(out_dir, fn))
        nets["head"] = fn
    # probes: inputs and onnxruntime outputs (stand-ins for the torch outputs an export stores)
    import onnxruntime as ort

    probes = {}
    for fn in sorted({*nets["betavae_encoder"].values(), *nets["betavae_decoder"].values(),
                      *nets["subset_encoder"].values(), *nets["decoder"].values(), *([nets["head"]] if nets["head"] else [])}):
        sess = ort.InferenceSession(os.path.join(out_dir, fn), providers=["CPUExecutionProvider"])
        feeds = {}
        for i in sess.get_inputs():
            feeds[i.name] = rng.normal(size=[2, *i.shape[1:]]).astype(np.float32)
            probes[f"{fn}:{i.name}"] = feeds[i.name]
        for o, v in zip(sess.get_outputs(), sess.run(None, feeds)):
            probes[f"{fn}:{o.name}"] = v
    np.savez(os.path.join(out_dir, "probes.npz"), **probes)
    files = {}
    for fn in sorted(os.listdir(out_dir)):
        if fn.endswith((".onnx", ".npz")):
            with open(os.path.join(out_dir, fn), "rb") as f:
                files[fn] = hashlib.sha256(f.read()).hexdigest()
    text = "".join(f"{k}:{files[k]}\n" for k in sorted(files))
    manifest = {
        "format": "m2vae_fusion.bundle", "format_version": 1,
        "model_id": hashlib.sha256(text.encode()).hexdigest()[:16],
        "package_version": "test", "modalities": list(modalities), "inputs": inputs_meta,
        "feature_dim": feature_dim, "latent_dim": latent_dim, "subsets": subsets,
        "class_names": CLASS_NAMES if with_head else None, "networks": nets, "files": files,
        "probes": "probes.npz", "training": {"config": {"kind": "linear test bundle", "drift": drift}},
    }
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    if format_version >= 2:
        from m2vae_fusion.training.export import rebuild_bundle

        rebuild_bundle(out_dir, out_dir, bounds_data=bounds_data)
    return out_dir
