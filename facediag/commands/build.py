"""`facediag build BUNDLE --precision P`: make this station's TensorRT engine from a bundle."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "build"
HELP = "build a TensorRT engine for this device from a bundle's ONNX model (engine + manifest)"
DESCRIPTION = (
    "Builds BUNDLE/model.<precision>.engine with the TensorRT installed here, for this GPU (or DLA core), "
    "and writes a manifest beside it (model hash, TensorRT version, GPU, compute capability, shapes, builder "
    "options) that the daemon checks before it loads the engine. fp16 builds the bundle's FP16 ONNX and int8 "
    "its INT8 Q/DQ ONNX (`facediag quantize --target tensorrt`); precision comes from the model, so no "
    "implicit calibration is needed. --legacy-calibrator uses TensorRT's old entropy calibrator on the FP32 "
    "model instead (TensorRT 8.5-10.x only; removed in 11). Building can take minutes; run `facediag verify` "
    "afterwards. Needs TensorRT and pycuda (JetPack on Jetson)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from facediag.commands._bundle_trust import add_trust_arguments
    from facediag.edge import precision as precision_table

    add_trust_arguments(parser)
    parser.add_argument("bundle", type=Path, nargs="?", help="model bundle folder (or give --config)")
    parser.add_argument("--precision", default=precision_table.ENGINE_DEFAULT,
                        help=f"{', '.join(precision_table.engine_choices())} (default {precision_table.ENGINE_DEFAULT})")
    parser.add_argument(
        "--config", type=Path, default=None,
        help="station.toml: take bundle and precision from [engine]; exits 0 without building when the station "
        "runs ONNX Runtime (no TensorRT here, backend onnxruntime, precision int8-cpu) or a current engine exists "
        "(what the engine-build systemd unit runs)",
    )
    parser.add_argument("--opt-batch", type=int, default=1, help="batch size TensorRT optimises for (default 1)")
    parser.add_argument("--max-batch", type=int, default=8, help="largest batch the engine accepts (default 8)")
    parser.add_argument("--workspace-mib", type=int, default=1024, help="builder workspace limit in MiB (default 1024)")
    parser.add_argument("--dla-core", type=int, default=None, help="build for this DLA core (Jetson), GPU fallback on")
    parser.add_argument("--output", type=Path, default=None, help="folder for the engine (default: the bundle folder)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="timing/calibration caches (default $XDG_CACHE_HOME/facediag/tensorrt)")
    parser.add_argument("--legacy-calibrator", action="store_true",
                        help="int8 via TensorRT's implicit entropy calibration on the FP32 model (deprecated path)")
    parser.add_argument("--calibration", type=Path, default=None,
                        help="with --legacy-calibrator: calibration set folder, .npy inputs, or aligned crops folder")
    parser.add_argument("--calibration-cache", type=Path, default=None, help="with --legacy-calibrator: cache file")


def run(args: argparse.Namespace) -> int:
    from facediag.converters.tensorrt_build import build_engine
    from facediag.edge.errors import ConfigError

    if args.config is not None:
        from facediag.commands._station_engine import plan_from_config

        plan = plan_from_config(args.config)
        if plan.precision is None:
            print(f"nothing to build: {plan.reason}")
            return 0
        args.bundle, args.precision = plan.bundle, plan.precision
        from facediag.commands._bundle_trust import check_trust

        check_trust(args, args.bundle)  # before anything runs the bundle's model
        if _engine_is_current(args.bundle, args.precision):
            print(f"engine for {args.bundle} ({args.precision}) is current for this device: nothing to build")
            return 0
    if args.bundle is None:
        raise ConfigError("give a BUNDLE folder, or --config station.toml")
    if args.config is None:
        from facediag.commands._bundle_trust import check_trust

        check_trust(args, args.bundle)  # unsigned / untrusted / re-hashed: refused before anything is built
    calibration = None
    if args.calibration is not None:
        if not args.legacy_calibrator:
            raise ConfigError(
                "--calibration is only used with --legacy-calibrator; the int8 Q/DQ model already carries its scales"
            )
        from facediag.converters.verify import load_inputs
        from facediag.edge.bundle import load_bundle

        calibration = load_inputs(args.calibration, load_bundle(args.bundle).contract)
    result = build_engine(
        args.bundle,
        args.precision,
        opt_batch=args.opt_batch,
        max_batch=args.max_batch,
        workspace_mib=args.workspace_mib,
        dla_core=args.dla_core,
        legacy_calibrator=args.legacy_calibrator,
        calibration=calibration,
        calibration_cache=args.calibration_cache,
        output_dir=args.output,
        cache_dir=args.cache_dir,
    )
    m = result.manifest
    print(json.dumps({
        "engine": str(result.engine_path),
        "manifest": str(result.manifest_path),
        "precision": m.precision,
        "tensorrt": m.tensorrt_version,
        "gpu": m.gpu_name,
        "network_flags": list(result.plan.network_flags),
        "builder_flags": list(result.plan.builder_flags),
        "next": f"facediag verify {args.bundle} --precision {args.precision} --inputs CROPS",
    }, indent=2))
    return 0



def _engine_is_current(bundle: Path, precision: str) -> bool:
    """Whether an engine built for this device from the bundle's model already exists (TensorRT needed)."""
    from facediag.edge.bundle import load_bundle
    from facediag.edge.engine.manifest import normalize_precision
    from facediag.edge.engine.select import engine_is_current, probe_tensorrt_device

    return engine_is_current(load_bundle(bundle), normalize_precision(precision), probe_tensorrt_device())
