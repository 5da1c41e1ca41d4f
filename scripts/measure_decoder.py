"""How fast and how accurate DeepCOD's edge decode is, per committed artefact of a plugin
(the figures of docs/offloaders.md's "The edge's decoder"):

    .venv/bin/python scripts/measure_decoder.py [--plugin mobilenet_v2] [--count N]
        [--rounds 15] [--bf16] [--compile] [--onnx DIR]

Accuracy: every artefact's offloader runs the first N test samples (default all) through
its own `device()` and `edge()` as `testbed.experiment.rate_accuracy` does, once with the
edge's decoder (`FusedDecoder`) and once with the decoder's modules (`reference=True`);
the score is rate_accuracy's (top-1 against the labels, agreement where there are none).
Speed: the decode of one sample's centre values on one torch thread, the variants'
rounds interleaved so that the load on a shared machine hits them alike; medians and
best rounds in ms, and each variant's speedup over the modules in the same run.
Measured options that are not shipped: the modules in channels-last memory; `--bf16`
the fused decoder in bfloat16 (fast only where the CPU has bf16 instructions, and
different maths); `--compile` torch.compile of the fused decoder (its compile time is
printed); `--onnx DIR` ONNX Runtime on the modules' graph, with onnxruntime and onnx
importable from DIR (not a dependency of the testbed).
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testbed.errors import TestbedError
from testbed.experiment import rate_accuracy
from testbed.models import plugins
from testbed.offloaders.base import warm_kernels
from testbed.offloaders.deepcod import DeepCODOffloader
from testbed.offloaders.deepcod.model import DeepCOD, FusedDecoder


def accuracy(config, plugin, model, inputs, labels, references, variant: str) -> dict:
    """rate_accuracy's points for one artefact, the edge's decode replaced by the variant's:
    "modules" (reference=True), "fused" (the shipped decode), "bfloat16"."""
    offloader = rate_accuracy.build(config, plugin, model)
    networks = offloader.networks
    if variant == "modules":  # the instance's decode, as the edge calls it
        networks.decode = functools.partial(DeepCOD.decode, networks, reference=True)
    elif variant == "bfloat16":
        decode = bf16(networks)
        networks.decode = lambda y, size: decode(y, size) * networks.scale
    points = rate_accuracy.measure(
        config, offloader, inputs, rate_accuracy.HeadCache(None, None, inputs)
    )
    rate_accuracy.score(points, plugin, references, labels)
    scored = [p for p in points if p["correct"] != ""]
    return {
        "top1": 100 * sum(p["correct"] for p in scored) / len(scored) if scored else None,
        "agreement": 100 * sum(p["agrees"] for p in points) / len(points),
        "predictions": [p["prediction"] for p in points],
    }


def bf16(networks: DeepCOD) -> Callable:
    """The fused decoder with every weight and activation in bfloat16."""
    fused = FusedDecoder(networks.decoder)
    for part in (fused, fused.up1, fused.up2):
        for name, value in list(vars(part).items()):
            if isinstance(value, torch.Tensor):
                setattr(part, name, value.to(torch.bfloat16))
    return lambda y, size: fused(y.to(torch.bfloat16), size).float()


def onnx_session(networks: DeepCOD, y: torch.Tensor, folder: Path) -> Callable:
    """ONNX Runtime (one thread, every graph optimisation) on the modules' graph with
    spectral norms removed (ONNX has no vdot)."""
    sys.path.insert(0, str(folder))
    import onnxruntime
    from torch.nn.utils import parametrize

    decoder = copy.deepcopy(networks.decoder)
    # plain convolutions of the normalised weights (remove_parametrizations would change
    # the class that the original's convolutions share with the copy's)
    for name, module in list(decoder.named_modules()):
        if parametrize.is_parametrized(module):
            plain = torch.nn.Conv2d(
                module.in_channels, module.out_channels, module.kernel_size, padding=module.padding
            )
            with torch.no_grad():
                plain.weight.copy_(module.weight)
                plain.bias.copy_(module.bias)
            parent, _, child = name.rpartition(".")
            setattr(decoder.get_submodule(parent), child, plain)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        path = Path(tmp) / "decoder.onnx"
        torch.onnx.export(decoder, (y,), str(path), dynamo=False, opset_version=17)
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
    name = session.get_inputs()[0].name
    return lambda y, size: torch.from_numpy(session.run(None, {name: y.numpy()})[0])


def variants(networks: DeepCOD, y: torch.Tensor, args) -> dict[str, Callable]:
    found: dict[str, Callable] = {
        "modules (reference)": functools.partial(networks.decode, reference=True),
        "fused (shipped)": networks.decode,
    }
    channels_last = copy.deepcopy(networks).to(memory_format=torch.channels_last)
    found["modules, channels-last"] = lambda y, size: channels_last.decode(
        y.contiguous(memory_format=torch.channels_last), size, reference=True
    ).contiguous()
    if args.bf16:
        found["fused, bfloat16"] = bf16(networks)
    if args.compile:
        start = time.perf_counter()
        compiled = torch.compile(FusedDecoder(networks.decoder).__call__)
        compiled(y, None)
        print(f"torch.compile of the fused decoder: {time.perf_counter() - start:.1f} s")
        found["fused, torch.compile"] = compiled
    if args.onnx:
        found["ONNX Runtime (modules' graph)"] = onnx_session(networks, y, args.onnx)
    return found


def timing(
    found: dict[str, Callable], y: torch.Tensor, size, rounds: int
) -> dict[str, list[float]]:
    """ms per decode, the variants interleaved in each round."""
    times: dict[str, list[float]] = {name: [] for name in found}
    with torch.inference_mode():
        reference = found["modules (reference)"](y, size)
        for name, decode in found.items():
            for _ in range(2):
                out = decode(y, size)
            diff = float((out.float() - reference).abs().max())
            print(f"  {name}: max |difference| from the modules {diff:.2g}")
        for _ in range(rounds):
            for name, decode in found.items():
                start = time.perf_counter()
                decode(y, size)
                times[name].append(1000 * (time.perf_counter() - start))
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--plugin", default="mobilenet_v2")
    parser.add_argument(
        "--count", type=int, default=None, help="the first N test samples (default: all)"
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--onnx", type=Path, default=None, metavar="DIR")
    parser.add_argument("--no-accuracy", action="store_true", help="time only")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        plugin = plugins.get(args.plugin)
        model = plugin.load_model()
        configs, _ = rate_accuracy.configurations(plugin, ("deepcod",))
        if not configs:
            raise TestbedError(f"no DeepCOD artefacts beside plugin {args.plugin!r}")
        inputs, labels = rate_accuracy.load_inputs(plugin, None, args.count)
    except TestbedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    warm_kernels({DeepCODOffloader})
    references = rate_accuracy.reference(plugin, model, inputs)
    for config in configs:
        print(f"{config.label}:")
        offloader = rate_accuracy.build(config, plugin, model)
        networks = offloader.networks
        x = plugin.to_tensor(inputs[:1]) if not offloader.split else None
        with torch.inference_mode():
            if x is None:  # features after a split: random centre values of their shape
                indices = torch.randint(len(offloader.codebook.centres), offloader.shape)
            else:
                indices = networks.quantizer.indices(networks.encode(x))
            y = networks.quantizer.centres[indices]
        size = offloader.size
        times = timing(variants(networks, y, args), y, size, args.rounds)
        base = statistics.median(times["modules (reference)"])
        for name, ms in times.items():
            median = statistics.median(ms)
            print(
                f"  {name:32s} median {median:6.1f} ms  best {min(ms):6.1f} ms  "
                f"speedup {base / median:4.2f}x"
            )
        if args.no_accuracy:
            continue
        names = ("modules", "fused", "bfloat16") if args.bf16 else ("modules", "fused")
        found = {
            name: accuracy(config, plugin, model, inputs, labels, references, name)
            for name in names
        }
        for name, f in found.items():
            top1 = "-" if f["top1"] is None else f"{f['top1']:.2f} %"
            same = sum(
                a == b
                for a, b in zip(f["predictions"], found["modules"]["predictions"], strict=True)
            )
            print(
                f"  {name:8s} top-1 {top1}  agreement {f['agreement']:.2f} %  "
                f"same prediction as the modules: {same} of {len(inputs)}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
