"""save_pretrained / load_pretrained for pruned Hugging Face models: safetensors + config + manifest, no pickle.

Every save writes ``flowprune.json``: the plans, the SHA-256 and size of every weight file, every tensor
in those files (file, shape, dtype) and the model's state_dict names and shapes.  ``load_pretrained``
verifies all of it before building the model and compares the built model with it afterwards, so it
never hands back a model with weights that Hugging Face re-initialised.

A plan that only deletes layers is expressed by the config alone (``num_hidden_layers`` and per-layer
lists are kept in sync), so plain ``from_pretrained`` reloads it (``flowprune.json`` is ignored there).
Other removals (branches, fills, identity layers) are replayed by ``load_pretrained``: it loads the
config's architecture with ``from_pretrained``, re-applies those replacements (paths mapped through the
layer deletions) and loads the stubs' own tensors (fills) from ``flowprune-fills.safetensors``.

Saving never destroys: a folder flowprune did not write is never replaced, and replacing one it did
write is a crash-safe swap (an atomic ``renameat2(RENAME_EXCHANGE)`` on Linux; elsewhere two renames
whose interruption the next save or load repairs).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import struct
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from ._version import __version__
from .adapters import is_stub
from .errors import CheckpointError, InputError, PlanError
from .plan import Plan, write_atomic

META = "flowprune.json"
# the stubs' own tensors (fills), under the model's state_dict names: transformers may rename keys on
# save (e.g. ViT's layers -> encoder.layer), so they are kept out of its files and written here
FILLS = "flowprune-fills.safetensors"
FORMAT = 1  # manifest format; 0 (no "format" key) was plans only, without weight hashes
_TAG = "fpsave"  # temp folders are ".{name}.fpsave-new-*" / ".{name}.fpsave-old-*": never anyone else's
# files whose bytes are weights: hashed into the manifest, and any unlisted one is refused at load
_WEIGHT_SUFFIXES = (
    ".safetensors",
    ".safetensors.index.json",
    ".bin",
    ".bin.index.json",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".msgpack",
    ".gguf",
    ".npz",
)
_AT_FDCWD, _RENAME_NOREPLACE, _RENAME_EXCHANGE = -100, 1, 2
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP}


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No progress bars or load reports from transformers: stubbed weights are absent on purpose, and
    ``load_pretrained`` checks the loading info itself (``_check_loaded``)."""
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


# ---------------------------------------------------------------------------------------------------
# file-system primitives (module level so that tests can interrupt the swap at each step)

_renameat2_fn: Any = None


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux ``renameat2``; False where it (or ``flags`` on this file system) is unsupported."""
    global _renameat2_fn
    if _renameat2_fn is None:
        _renameat2_fn = False
        if sys.platform.startswith("linux"):
            try:
                fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28, musl >= 1.2.2
                fn.argtypes = [
                    ctypes.c_int,
                    ctypes.c_char_p,
                    ctypes.c_int,
                    ctypes.c_char_p,
                    ctypes.c_uint,
                ]
                fn.restype = ctypes.c_int
                _renameat2_fn = fn
            except (OSError, AttributeError):
                pass
    if not _renameat2_fn:
        return False
    if _renameat2_fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:  # e.g. some network or FUSE file systems
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths; False where the OS or file system cannot."""
    return _renameat2(a, b, _RENAME_EXCHANGE)


def _rename(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``, which must not exist (never silently replaces an empty folder)."""
    if not _renameat2(src, dst, _RENAME_NOREPLACE):
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "already exists", str(dst))
        os.rename(src, dst)


def _rmtree(path: Path) -> None:
    shutil.rmtree(path)


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's entries to disk (skipped where the platform cannot fsync that)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if os.name == "nt":  # folders cannot be opened on Windows; NTFS journals renames
            return
        raise
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in _UNSUPPORTED | {errno.EBADF, errno.EACCES}:
            raise
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------
# the target folder: refusals, temp folders, recovery, swap


def _temps(target: Path) -> list[Path]:
    """Temp folders this module made for ``target`` (new ones being written, old ones being swapped out)."""
    pat = re.compile(rf"\.{re.escape(target.name)}\.{_TAG}-(new|old)-[A-Za-z0-9_]+")
    try:
        entries = list(target.parent.iterdir())
    except FileNotFoundError:
        return []
    return sorted(p for p in entries if pat.fullmatch(p.name) and p.is_dir() and not p.is_symlink())


def _recover(target: Path) -> None:
    """Undo a swap cut short between its two renames (the fallback without RENAME_EXCHANGE): the target
    is missing and the old folder waits beside it, complete.  Putting it back makes the interrupted save
    as if it never started."""
    if os.path.lexists(target):
        return
    olds = [p for p in _temps(target) if f".{_TAG}-old-" in p.name]
    if not olds:
        return
    old = max(olds, key=lambda p: (p.stat().st_mtime_ns, p.name))
    try:
        _rename(old, target)
        _fsync(target.parent)
    except OSError as e:
        raise CheckpointError(
            f"a save into {target} was interrupted and the previous folder is at {old}, "
            f"but putting it back failed ({e}): rename {old} to {target}"
        ) from e


def _clean(target: Path) -> None:
    """Delete the temp folders left by interrupted saves (only once the target is whole again)."""
    for p in _temps(target):
        _rmtree(p)


def _is_flowprune_folder(path: Path) -> bool:
    meta = path / META
    if not meta.is_file() or meta.is_symlink():
        return False
    try:
        d = json.loads(meta.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and "flowprune" in d and "plans" in d


def _check_target(directory: str | os.PathLike) -> Path:
    """The absolute target path, or InputError for a path whose replacement would destroy something."""
    raw = os.fspath(directory)
    target = Path(os.path.abspath(raw))  # lexical: "a/.." is the cwd, a symlink stays a symlink
    real = target.resolve()
    cwd = Path.cwd().resolve()
    protected = {cwd, *cwd.parents, Path(real.anchor)}
    try:
        protected.add(Path.home().resolve())
    except (RuntimeError, KeyError):  # no home directory known
        pass
    if real in protected or target in protected or not target.name:
        raise InputError(
            f"refusing to save into {raw!r} ({real}): it is the current directory, one of its "
            f"parents, the home directory or the file-system root, and a save replaces the whole "
            f"folder. Pass a new sub-folder, e.g. save_pretrained(model, 'pruned-model')"
        )
    if target.is_symlink():
        raise InputError(
            f"refusing to save into {raw!r}: it is a symbolic link (to {real}) and a save would "
            f"replace the link, not the folder. Pass the folder itself: {real}"
        )
    if target.exists() and not target.is_dir():
        raise InputError(
            f"refusing to save into {raw!r}: it is a file, not a folder. Pass a folder path "
            f"(it is created), e.g. {target.with_suffix('')}-model"
        )
    return target


def _swap(new: Path, target: Path) -> None:
    """Move the complete folder ``new`` to ``target``.  At every instant ``target`` holds the complete
    old or the complete new folder; only the fallback has an instant with neither, which ``_recover``
    undoes on the next save or load."""
    if not os.path.lexists(target):
        _rename(new, target)
        _fsync(target.parent)
        return
    if _exchange(new, target):  # atomic; ``new`` now holds the old folder
        _fsync(target.parent)
        _rmtree(new)
        return
    old = target.parent / f".{target.name}.{_TAG}-old-{secrets.token_hex(6)}"
    _rename(target, old)
    _rename(new, target)
    _fsync(target.parent)
    _rmtree(old)


# ---------------------------------------------------------------------------------------------------
# the manifest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_weight_file(name: str) -> bool:
    return name.endswith(_WEIGHT_SUFFIXES)


def _weight_files(folder: Path) -> list[str]:
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and _is_weight_file(p.name)
    )


def _header(path: Path) -> dict[str, dict]:
    """The tensors of a safetensors file, {name: {"shape", "dtype"}}, read from its header only;
    CheckpointError if the header is unreadable or the file is shorter or longer than it says."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise CheckpointError(
                f"{path} is truncated or not a safetensors file ({size} bytes, unreadable "
                f"header): copy the folder again or re-save the model"
            )
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise CheckpointError(
                f"{path} has a corrupt safetensors header ({e}): copy the folder again "
                f"or re-save the model"
            ) from e
    try:
        header.pop("__metadata__", None)
        end = max((int(t["data_offsets"][1]) for t in header.values()), default=0)
        tensors = {
            k: {"shape": [int(s) for s in t["shape"]], "dtype": str(t["dtype"])}
            for k, t in header.items()
        }
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as e:
        raise CheckpointError(
            f"{path} has a corrupt safetensors header ({type(e).__name__}: {e}): copy the "
            f"folder again or re-save the model"
        ) from e
    if 8 + n + end != size:
        raise CheckpointError(
            f"{path} is truncated or corrupt: its header needs {8 + n + end} bytes, the "
            f"file has {size}. Copy the folder again or re-save the model"
        )
    return tensors


def _manifest_digest(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _manifest(folder: Path, model: nn.Module, plans: list[Plan]) -> dict:
    files, tensors = {}, {}
    for rel in _weight_files(folder):
        path = folder / rel
        files[rel] = {"sha256": _sha256(path), "bytes": path.stat().st_size}
        if rel.endswith(".safetensors"):
            tensors.update({k: {"file": rel, **t} for k, t in _header(path).items()})
    if not tensors:
        raise InputError(
            f"{type(model).__name__}.save_pretrained wrote no safetensors file: flowprune saves "
            f"and verifies safetensors only"
        )
    manifest = {
        "flowprune": __version__,
        "format": FORMAT,
        "plans": [json.loads(p.to_json()) for p in plans],
        "files": files,
        "tensors": tensors,
        "state_dict": {k: list(v.shape) for k, v in model.state_dict().items()},
    }
    manifest["sha256"] = _manifest_digest(manifest)
    return manifest


def _fail(
    path: Path,
    what: str,
    fix: str = "copy the folder again from where it was saved, or re-save the "
    "model with flowprune.save_pretrained",
) -> CheckpointError:
    return CheckpointError(f"{path} {what}: {fix}")


def verify_pretrained(directory: str | os.PathLike) -> dict:
    """Check a folder written by ``save_pretrained`` against its ``flowprune.json`` (files present, sizes,
    tensor names/shapes/dtypes, SHA-256); returns the manifest, or raises one CheckpointError naming the
    file and the fix.

    >>> manifest = verify_pretrained("pruned/")
    """
    d = Path(directory)
    meta = d / META
    if not d.is_dir():
        raise CheckpointError(
            f"{d} is not a folder: pass the folder given to flowprune.save_pretrained"
        )
    if not meta.is_file():
        raise CheckpointError(
            f"{d} has no {META}, so it was not written by flowprune.save_pretrained (which "
            f"records every weight file's SHA-256 there). A plain Hugging Face checkpoint loads "
            f"with AutoModelForCausalLM.from_pretrained('{d}') (or its model class)"
        )
    try:
        manifest = json.loads(meta.read_text())
    except (OSError, ValueError) as e:
        raise _fail(meta, f"is not valid JSON ({e})") from e
    if not isinstance(manifest, dict) or "flowprune" not in manifest:
        raise _fail(meta, "is not a flowprune manifest")
    if "format" not in manifest:
        raise _fail(
            meta,
            f"was written by flowprune {manifest.get('flowprune')}, before manifests recorded the "
            f"weights' SHA-256, so the weights cannot be verified",
            "load it with that version and save it again with this one",
        )
    if not isinstance(manifest["format"], int):
        raise _fail(meta, f"is malformed (format {manifest['format']!r})")
    if manifest["format"] > FORMAT:
        raise _fail(
            meta,
            f"has format {manifest['format']}, newer than flowprune {__version__} reads",
            "upgrade flowprune",
        )
    if manifest.get("sha256") != _manifest_digest(manifest):
        raise _fail(meta, "was modified after saving (its own checksum does not match)")
    if not (d / "config.json").is_file():
        raise _fail(d / "config.json", "is missing")
    kinds = {"plans": list, "files": dict, "tensors": dict, "state_dict": dict}
    wrong = [k for k, t in kinds.items() if not isinstance(manifest.get(k), t)]
    if wrong:
        raise _fail(meta, f"is malformed (bad or missing {wrong})")
    try:
        _check_files(d, manifest["files"], manifest["tensors"])
    except CheckpointError:
        raise
    except (
        KeyError,
        TypeError,
        ValueError,
        AttributeError,
    ) as e:  # well-formed JSON, wrong structure
        raise _fail(meta, f"is malformed ({type(e).__name__}: {e})") from e
    return manifest


def _check_files(d: Path, files: dict, tensors: dict) -> None:
    for rel in _weight_files(d):
        if rel not in files:
            raise _fail(
                d / rel,
                f"is a weight file not listed in {META}",
                "remove it (a folder mixed from two saves?) or re-save the model",
            )
    for rel, rec in files.items():
        path = d / rel
        if not path.is_file():
            raise _fail(path, f"is missing (listed in {META})")
        if rel.endswith(".safetensors"):
            found = _header(path)
            want = {
                k: {"shape": t["shape"], "dtype": t["dtype"]}
                for k, t in tensors.items()
                if t["file"] == rel
            }
            if found != want:
                missing, extra = sorted(set(want) - set(found)), sorted(set(found) - set(want))
                shaped = sorted(k for k in set(want) & set(found) if want[k] != found[k])
                raise _fail(
                    path,
                    "does not hold the tensors recorded in flowprune.json"
                    + (f"; missing {missing[:5]}" if missing else "")
                    + (f"; unexpected {extra[:5]}" if extra else "")
                    + "".join(
                        f"; {k} is {found[k]['dtype']}{found[k]['shape']}, saved as "
                        f"{want[k]['dtype']}{want[k]['shape']}"
                        for k in shaped[:5]
                    ),
                )
        if path.stat().st_size != rec["bytes"]:
            raise _fail(
                path,
                f"has {path.stat().st_size} bytes, {rec['bytes']} were saved (truncated or corrupt)",
            )
        if _sha256(path) != rec["sha256"]:
            raise _fail(path, "differs from what was saved (SHA-256 mismatch: corrupt or modified)")


# ---------------------------------------------------------------------------------------------------
# public API


def save_pretrained(
    model: nn.Module,
    directory: str | os.PathLike,
    tokenizer: Any = None,
    overwrite: bool = False,
    *,
    max_shard_size: int | str | None = None,
) -> Path:
    """Write ``model`` (and ``tokenizer``) to ``directory`` with a ``flowprune.json`` manifest; returns
    the absolute path.

    The folder is written beside the target and moved into place whole.  An existing folder is replaced
    only with ``overwrite=True`` and only if flowprune wrote it (it holds ``flowprune.json``); an empty
    folder counts as absent.  A file, a symbolic link, the current directory or one of its parents, the
    home directory and the root are refused (InputError).  The replacement is crash-safe: see the module
    docstring.  Not meant for two processes saving to the same path at once.

    >>> flowprune.save_pretrained(small, "pruned/", tokenizer=tok)
    >>> flowprune.save_pretrained(smaller, "pruned/", overwrite=True)
    >>> same = flowprune.load_pretrained("pruned/")
    """
    if not hasattr(model, "save_pretrained"):
        raise InputError(
            f"save_pretrained needs a Hugging Face model (PreTrainedModel), got {type(model).__name__}; "
            f"for other models save plan.to_json() and the state_dict with safetensors"
        )
    target = _check_target(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    _recover(
        target
    )  # a previous save cut short: first make the target whole, then drop its leftovers
    _clean(target)
    if target.is_dir() and any(target.iterdir()):
        if not _is_flowprune_folder(target):
            raise InputError(
                f"refusing to save into {target}: it holds files and was not written by "
                f"flowprune.save_pretrained (no valid {META}), so it is not replaced, even with "
                f"overwrite=True. Choose a new folder, or delete this one yourself"
            )
        if not overwrite:
            raise InputError(
                f"{target} already holds a model saved by flowprune: pass overwrite=True to replace "
                f"it, or choose a new folder"
            )
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.{_TAG}-new-"))
    try:
        fills = _stub_state(model)
        kw: dict[str, Any] = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
        if fills:
            kw["state_dict"] = {k: v for k, v in model.state_dict().items() if k not in fills}
        with _quiet_transformers():
            model.save_pretrained(tmp, **kw)  # safetensors
        if fills:
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in fills.items()},
                str(tmp / FILLS),
                metadata={"format": "pt"},
            )
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        plans: list[Plan] = list(getattr(model, "flowprune_plans", []))
        manifest = _manifest(tmp, model, plans)
        for p in tmp.rglob("*"):  # the data must be on disk before the rename that publishes it
            if p.is_file():
                _fsync(p)
        write_atomic(
            tmp / META, json.dumps(manifest, indent=1)
        )  # last: its presence marks a complete folder
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700
        _fsync(tmp)
        _swap(tmp, target)
    except BaseException:
        try:  # a Ctrl-C mid-swap: put the old folder back now rather than at the next call
            _recover(target)
            _clean(target)
        except (OSError, CheckpointError):  # the next save or load retries; the interrupt goes on
            pass
        raise
    return target


def _map_path(path: str, deletions: dict[str, list[int]]) -> str | None:
    """Where ``path`` is after the deletions ({stack path: removed indices}); None if it was deleted."""
    for stack, removed in deletions.items():
        prefix = stack + "."
        if path.startswith(prefix):
            head, _, rest = path[len(prefix) :].partition(".")
            if head.isdigit():
                i = int(head)
                if i in removed:
                    return None
                j = i - sum(r < i for r in removed)
                return f"{stack}.{j}" + (f".{rest}" if rest else "")
    return path


def _check_loaded(model: nn.Module, info: dict, ours: set[str], manifest: dict, d: Path) -> None:
    """The built model must hold exactly the saved tensors: nothing that transformers re-initialised."""
    mismatched = sorted(
        str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or []
    )
    if mismatched:
        raise _fail(
            d / "config.json",
            f"does not fit the saved weights (shape mismatch for {mismatched[:5]})",
        )
    state = model.state_dict()
    reinit = sorted((set(state) & set(info.get("missing_keys") or [])) - ours)
    if reinit:
        raise _fail(
            d,
            f"lacks the weights {reinit[:5]} ({len(reinit)} in all) that this model needs; "
            f"transformers would have initialised them at random",
        )
    unused = sorted(set(info.get("unexpected_keys") or []) - ours)
    if unused:
        raise _fail(d, f"holds weights {unused[:5]} that the rebuilt model does not use")
    got = {k: list(v.shape) for k, v in state.items()}
    want = manifest["state_dict"]
    if got != want:
        diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
        raise _fail(
            d,
            f"rebuilt into a model whose state_dict differs from the saved one at {diff[:5]} "
            f"(model {[got.get(k) for k in diff[:5]]}, saved {[want.get(k) for k in diff[:5]]})",
            "load it with the flowprune and transformers versions that saved it, or re-save it",
        )


def load_pretrained(directory: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """Load a model written by ``save_pretrained`` (``kwargs`` go to ``from_pretrained``), in eval mode.

    The folder is verified against ``flowprune.json`` first (``verify_pretrained``) and the built model
    against it afterwards; any missing, extra, mis-shaped, truncated or modified weight, a missing config
    or a missing or edited manifest raises one CheckpointError naming the file.  A folder without
    ``flowprune.json`` (a plain Hugging Face checkpoint) is refused: load it with ``from_pretrained``.

    >>> same = flowprune.load_pretrained("pruned/", dtype=torch.bfloat16)
    """
    import transformers
    from safetensors import safe_open

    from .rewrite.rewriter import make_stub

    d = Path(directory)
    _recover(Path(os.path.abspath(d)))  # a save cut short between its two renames (fallback swap)
    manifest = verify_pretrained(d)
    try:
        config = transformers.AutoConfig.from_pretrained(d)
    except (OSError, ValueError, KeyError) as e:
        raise _fail(d / "config.json", f"cannot be read by transformers ({e})") from e
    archs = getattr(config, "architectures", None) or []
    cls = getattr(transformers, archs[0], None) if archs else None
    if cls is None:
        raise PlanError(
            f"{d}/config.json names no known architecture ({archs}): load it with its model class"
        )
    plans = [Plan.from_json(json.dumps(p)) for p in manifest["plans"]]
    sliced = any(p.slices for p in plans)
    try:
        with _quiet_transformers():  # the report is checked below (_check_loaded), not printed
            model, info = cls.from_pretrained(
                d,
                **{
                    **kwargs,
                    "output_loading_info": True,
                    # widths the config cannot express (per-layer) are built full, then sliced below
                    **({"ignore_mismatched_sizes": True} if sliced else {}),
                },
            )
    except RuntimeError as e:
        if "mismatched" not in str(e):
            raise
        raise _fail(
            d / "config.json",
            "does not fit the saved weights (tensor shapes differ from what it "
            "describes; was it edited?)",
        ) from e
    if sliced:
        info = _replay_slices(model, plans, info, manifest, d)
    for k, plan in enumerate(plans):
        later = [_deletions(p) for p in plans[k:]]
        modules = dict(model.named_modules())
        for rep in plan.replacements:
            if rep.mode == "delete":
                continue
            path: str | None = rep.path
            for dels in later:
                path = _map_path(path, dels) if path is not None else None
            if path is None:
                continue
            parent, _, name = path.rpartition(".")
            if path not in modules:
                raise PlanError(
                    f"{d / META} replaces '{path}', which the loaded model does not have"
                )
            setattr(modules[parent], name, make_stub(rep, modules[path]))
    needed = set(_stub_state(model))
    fills = {k for k, t in manifest["tensors"].items() if t["file"] == FILLS}
    if needed != fills:
        raise _fail(
            d / FILLS,
            f"does not hold the fills the plans need (missing {sorted(needed - fills)[:5]}, "
            f"unexpected {sorted(fills - needed)[:5]})",
        )
    state = {}
    if needed:
        with safe_open(str(d / FILLS), "pt") as sf:
            state = {k: sf.get_tensor(k) for k in sorted(needed)}
    model.load_state_dict(state, strict=False)
    _check_loaded(model, info, set(state), manifest, d)
    model.flowprune_plans = plans
    return model.eval()


def _replay_slices(
    model: nn.Module, plans: list[Plan], info: dict, manifest: dict, d: Path
) -> dict:
    """Slice what the config could not describe (widths that differ per layer), then load the saved
    tensors transformers skipped for their shape; returns the loading info without them."""
    from safetensors import safe_open

    from .channels import slice_

    def where(path: str | None, later: list) -> str | None:
        for dels in later:
            path = _map_path(path, dels) if path is not None else None
        return path

    state = model.state_dict(keep_vars=True)
    for k, plan in enumerate(plans):
        later = [_deletions(p) for p in plans[k:]]  # a plan slices before it deletes layers
        todo = []
        for s in plan.slices:
            module, _, leaf = s.param.rpartition(".")
            path = where(module, later)
            name = f"{path}.{leaf}" if path else leaf
            if path is None or name not in state:
                continue
            if state[name].shape[s.dim] != len(s.keep):  # the config built it full: slice it
                todo.append((name, s.dim, s.keep))
        if todo:
            attrs = [(where(a.module, later), a.attr, a.value) for a in plan.attrs]
            slice_(model, todo, [a for a in attrs if a[0] is not None])
            state = model.state_dict(keep_vars=True)
    wrong = {str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or []}
    by_file: dict[str, list[str]] = {}
    for name in wrong:
        entry = manifest["tensors"].get(name)
        if entry is None:
            raise _fail(d, f"holds no tensor {name} that the model needs")
        by_file.setdefault(entry["file"], []).append(name)
    loaded = {}
    for file, names in by_file.items():
        with safe_open(str(d / file), "pt") as sf:
            loaded.update({n: sf.get_tensor(n) for n in names})
    model.load_state_dict(loaded, strict=False)
    return {**info, "mismatched_keys": []}


def _stub_state(model: nn.Module) -> dict[str, Any]:
    """The tensors of the ``Removed`` stubs (fills), by state_dict name."""
    return {
        f"{n}.{k}": v
        for n, m in model.named_modules()
        if is_stub(m)
        for k, v in m.state_dict().items()
    }


def _deletions(plan: Plan) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in plan.replacements:
        if r.mode == "delete":
            stack, _, i = r.path.rpartition(".")
            out.setdefault(stack, []).append(int(i))
    return out
