"""Reading public backbone checkpoints safely and loading them strictly, with errors that name the keys.

Safety: nothing here ever runs plain ``pickle``. ``.safetensors`` files are read
with safetensors; everything else goes through ``torch.load(weights_only=True)``.

Why ``weights_only=True`` is enough for the old checkpoints too: many public
face-recognition checkpoints (e.g. the CASIA MobileFaceNet ``.ckpt``) were
written by PyTorch < 1.6 in the *legacy* (non-zip) serialisation: a pickle
stream of the object, followed by the raw storages. In PyTorch >= 2.6 (checked
with 2.13) ``torch.load`` recognises that format (no zip magic) and routes it
through ``_legacy_load`` with the same restricted unpickler
(``torch._weights_only_unpickler``) it uses for zip files: it rebuilds only
tensors, storages, ``collections.OrderedDict`` and plain containers/numbers, and
refuses any other global with an ``UnpicklingError``. So a legacy file holding
``{"epoch": int, "net_state_dict": OrderedDict[str, Tensor]}`` loads with
``weights_only=True`` and no extra allow-listing. (``mmap=True`` is *not*
available for the legacy format, so it is not used, and ``map_location="cpu"``
is required: that checkpoint's storages are tagged ``cuda`` and would not load
on a machine without a GPU. The much older ``.tar`` format of PyTorch < 0.4 is
refused by ``weights_only``; re-save such a file with a current PyTorch.) If a file holds anything
else (a whole pickled ``nn.Module``, numpy objects, custom classes), we refuse it
with a message saying how to re-save it as a plain state dict, instead of
falling back to an unsafe load.

Strictness: a backbone with a silently half-loaded state dict still runs and
produces plausible-looking but meaningless embeddings, so every load compares
keys and shapes first and reports missing keys, unexpected keys and shape
mismatches by name. The one tolerated difference is a missing BatchNorm
``num_batches_tracked`` counter (absent from checkpoints converted from other
frameworks; it never affects inference).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from facediag.edge.errors import ModelFileError

log = logging.getLogger(__name__)

# Keys under which training scripts commonly nest the state dict.
WRAPPER_KEYS = ("state_dict", "net_state_dict", "model_state_dict", "model", "backbone")
# Prefixes added by DataParallel / DistributedDataParallel / torch.compile.
STRIP_PREFIXES = ("module.", "_orig_mod.")
_MAX_LISTED = 8


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (zip or legacy), safely.

    Unwraps ``{"net_state_dict": ...}``-style containers and strips
    ``module.``-style prefixes. Raises ``ModelFileError`` with what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"weights file {path} not found: check the --weights path")
    if path.stat().st_size == 0:
        raise ModelFileError(f"weights file {path} is empty (an interrupted download?): fetch it again")
    if path.suffix == ".safetensors":
        obj: object = _read_safetensors(path)
    else:
        obj = _torch_load_weights_only(path)
    state = _unwrap(obj, path)
    return _strip_prefixes(state)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path} is not a readable safetensors file: {exc}") from None


def _torch_load_weights_only(path: Path) -> object:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(
            f"{path} holds Python objects other than tensors ({first}); facediag loads weights only with "
            "torch.load(weights_only=True) and never unpickles arbitrary code. Re-save it where it was made as a "
            "plain state dict: torch.save(model.state_dict(), 'weights.pth') (or safetensors)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a corrupt stream fails in many ways (IndexError, KeyError, EOFError...)
        raise ModelFileError(
            f"{path} is not a readable PyTorch checkpoint (truncated, or another format?): {type(exc).__name__}: {exc}"
        ) from None


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):  # at most a few levels of {"state_dict": {"model": ...}}
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}
        inner = next((obj[k] for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            break
        obj = inner
    what = (
        f"a dict with keys {sorted(map(str, obj))[:_MAX_LISTED]}"
        if isinstance(obj, Mapping)
        else type(obj).__name__
    )
    raise ModelFileError(
        f"{path} does not contain a state dict of tensors (found {what}); expected a state dict, "
        f"possibly nested under one of {', '.join(WRAPPER_KEYS)}"
    )


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in STRIP_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    more = len(keys) - _MAX_LISTED
    return shown + (f" (and {more} more)" if more > 0 else "")


def check_state_dict(
    module: nn.Module, state: Mapping[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """Compare ``state`` with ``module``'s own keys and shapes; return it ready for a strict load.

    Raises ``ModelFileError`` naming missing keys, unexpected keys and shape
    mismatches. Missing ``num_batches_tracked`` counters are filled with zeros.
    """
    expected = module.state_dict()
    state = dict(state)
    for key, value in expected.items():
        if key not in state and key.endswith("num_batches_tracked"):
            state[key] = torch.zeros_like(value, device="cpu")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): {_listing(wrong)}")
    if problems:
        name = getattr(module, "backbone_name", type(module).__name__)
        raise ModelFileError(
            f"{source} does not match the {name} architecture: " + "; ".join(problems) + ". "
            f"Check that the weights are for {name} in the documented checkpoint layout"
        )
    return state


def load_strict(
    module: nn.Module, state: Mapping[str, torch.Tensor], source: str = "state dict"
) -> nn.Module:
    """Load ``state`` into ``module`` with every key and shape checked (see ``check_state_dict``)."""
    checked = check_state_dict(module, state, source)
    module.load_state_dict(checked, strict=True)
    log.info("loaded %d tensors into %s from %s", len(checked), type(module).__name__, source)
    return module


def load_weights_file(module: nn.Module, path: str | Path) -> nn.Module:
    """Read ``path`` safely and load it strictly into ``module``."""
    return load_strict(module, read_state_dict(path), source=str(path))
