"""`facediag verify BUNDLE --precision P --inputs CROPS`: prove an engine against ONNX Runtime on this device."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "verify"
HELP = "prove a bundle precision on this device: compare it with ONNX Runtime on real crops (exit 1 below the gate)"
DESCRIPTION = (
    "Runs the bundle's TensorRT engine and the ONNX model it was built from (ONNX Runtime, CPU) on the same "
    "inputs and checks top-1 agreement (--min-agreement, default 0.99, reference near-ties left out: "
    "--tie-margin; shown at --confidence 0.95, so too few crops fail and the message says how many are needed; "
    "--min-agreement-all over every crop) and the largest class-probability difference (--max-prob-diff; default per precision). "
    "The result is recorded in the engine's manifest. Exit status: 0 passed, 1 failed the gate (or another "
    "error), 78 bad options. With --backend onnxruntime it checks the bundle's PRECISION model under ONNX "
    "Runtime against FP32 instead (for CPU-only stations); that is the default for precisions TensorRT does "
    "not run (int8-cpu). INPUTS: a calibration set folder, a .npy array (N x 3 x H x W, 0..255), or a folder "
    "of aligned crops from `facediag crop`."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from facediag.commands._args import add_gate_criteria_arguments
    from facediag.commands._bundle_trust import add_trust_arguments
    from facediag.edge import precision as precision_table

    add_trust_arguments(parser)
    parser.add_argument("bundle", type=Path, nargs="?", help="model bundle folder (or give --config)")
    parser.add_argument(
        "--config", type=Path, default=None,
        help="station.toml: bundle, precision and inputs (engine.verify_inputs) from [engine]; exits 0 when the "
        "station runs ONNX Runtime and there is no engine to verify (what the engine-build systemd unit runs)",
    )
    names = precision_table.engine_choices() + tuple(
        p for p in precision_table.NAMES if p not in precision_table.engine_precisions())
    parser.add_argument("--precision", default=precision_table.ENGINE_DEFAULT,
                        help=f"{', '.join(names)} (int8 = the int8-tensorrt engine; default {precision_table.ENGINE_DEFAULT})")
    parser.add_argument("--inputs", type=Path, default=None, help="calibration set, .npy inputs, or aligned crops")
    parser.add_argument("--backend", choices=precision_table.RUNTIMES, default=None,
                        help="runtime that runs PRECISION (default: tensorrt for precisions it runs, else onnxruntime)")
    parser.add_argument("--reference", default=None,
                        help="ONNX to compare with: 'source' (the engine's own ONNX, default for tensorrt) or a "
                             "bundle precision such as fp32 (default for onnxruntime)")
    add_gate_criteria_arguments(parser, labels=False, reference="the reference")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N inputs")
    parser.add_argument("--batch-size", type=int, default=8, help="inputs per inference call (default 8)")
    parser.add_argument("--engine-dir", type=Path, default=None, help="folder holding the engine (default: bundle)")
    parser.add_argument("--no-record", action="store_true", help="do not write the result into the engine manifest")


def run(args: argparse.Namespace) -> int:
    from facediag.converters.verify import load_inputs, verify_bundle
    from facediag.edge.bundle import load_bundle
    from facediag.edge.errors import ConfigError

    if args.config is not None:
        from facediag.commands._station_engine import plan_from_config

        plan = plan_from_config(args.config)
        if plan.precision is None:
            print(f"nothing to verify: {plan.reason}")
            return 0
        if plan.verify_inputs is None:
            raise ConfigError(
                "engine.verify_inputs is not set in the station config: point it at real aligned crops or a "
                "calibration set (facediag calibrate) for verify to run the engine on"
            )
        args.bundle, args.precision, args.inputs = plan.bundle, plan.precision, plan.verify_inputs
    if args.bundle is None or args.inputs is None:
        raise ConfigError("give BUNDLE and --inputs, or --config station.toml")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    from facediag.commands._bundle_trust import check_trust

    check_trust(args, args.bundle)  # unsigned / untrusted / re-hashed: refused before anything runs
    contract = load_bundle(args.bundle).contract
    inputs = load_inputs(args.inputs, contract, limit=args.limit)
    result = verify_bundle(
        args.bundle,
        args.precision,
        inputs,
        backend=args.backend,
        reference=args.reference,
        min_agreement=args.min_agreement,
        max_prob_diff=args.max_prob_diff,
        tie_margin=args.tie_margin,
        min_agreement_all=args.min_agreement_all,
        confidence=args.confidence,
        batch_size=args.batch_size,
        engine_dir=args.engine_dir,
        inputs_name=str(args.inputs),
        record=not args.no_record,
    )
    print(result.summary())
    print(json.dumps(result.to_dict(), indent=2))
    return 0 if result.passed else 1
