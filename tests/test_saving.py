"""save_pretrained never destroys (refusals, crash-safe swap) and load_pretrained never invents weights
(flowprune.json manifest: hashes, tensor names and shapes, post-load state_dict check)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import flowprune
from flowprune import CheckpointError, InputError, PlanError, saving
from flowprune._tree import tensor_leaves
from flowprune.graph.trace import call_model
from flowprune.zoo import ZOO
from flowprune.zoo.hf import HF

EAGER = {
    "attn_implementation": "eager"
}  # the zoo builds eager models: same kernels, identical logits


@pytest.fixture(scope="module")
def models():
    """{name: model} for a 4-layer Llama: unpruned, delete-only plan, branch + layer plan, mean fill."""
    e = ZOO["llama"]
    m, x = e.build(), e.inputs()
    g = flowprune.trace(m, x)
    ids = ["model.layers.0.self_attn:branch", "model.layers.1:layer", "model.layers.3.mlp:branch"]
    return {
        "base": m,
        "deleted": flowprune.apply(m, g.plan(["model.layers.2:layer"])),
        "branches": flowprune.apply(m, g.plan(ids)),
        "mean": flowprune.apply(m, g.plan(ids, fill="mean"), data=[x]),
    }


@pytest.fixture(scope="module")
def x():
    return ZOO["llama"].inputs()


def logits(model, x):
    with torch.no_grad():
        return model(**x).logits


def load(path):
    return flowprune.load_pretrained(path, **EAGER)


def temps(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def snapshot(d: Path) -> dict[str, bytes]:
    return {
        p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()
    }


# ---------------------------------------------------------------------------------------------------
# round trips and the manifest


@pytest.mark.parametrize("name", ["base", "deleted", "branches", "mean"])
def test_every_save_writes_a_manifest_and_round_trips(models, x, name, tmp_path):
    m = models[name]
    target = flowprune.save_pretrained(m, tmp_path / "m")
    assert target == (tmp_path / "m").absolute()
    man = json.loads((target / "flowprune.json").read_text())
    fills = (
        {"flowprune-fills.safetensors"} if name == "mean" else set()
    )  # the stubs' tensors, by model name
    assert set(man["files"]) == {"model.safetensors", *fills} and man["format"] == 1
    for f in man["files"]:
        assert man["files"][f]["sha256"] == saving._sha256(target / f)
    assert {k: t["shape"] for k, t in man["tensors"].items()} == {
        k: list(v.shape) for f in man["files"] for k, v in load_file(target / f).items()
    }
    assert man["state_dict"] == {k: list(v.shape) for k, v in m.state_dict().items()}
    back = load(target)
    assert torch.equal(logits(back, x), logits(m, x))
    assert back.flowprune_plans == getattr(m, "flowprune_plans", [])
    assert not temps(tmp_path)


def test_delete_only_plan_still_loads_with_plain_from_pretrained(models, x, tmp_path):
    flowprune.save_pretrained(models["deleted"], tmp_path / "m")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m", **EAGER).eval()
    assert torch.equal(logits(plain, x), logits(models["deleted"], x))


def test_sharded_save_hashes_every_shard_and_the_index(models, x, tmp_path):
    d = flowprune.save_pretrained(models["mean"], tmp_path / "m", max_shard_size="60KB")
    files = set(json.loads((d / "flowprune.json").read_text())["files"])
    shards = sorted(p.name for p in d.glob("*.safetensors"))
    assert len(shards) > 1 and files == {*shards, "model.safetensors.index.json"}
    assert torch.equal(logits(load(d), x), logits(models["mean"], x))
    (d / shards[-1]).unlink()
    with pytest.raises(CheckpointError, match=rf"{shards[-1]} is missing"):
        load(d)


@pytest.mark.parametrize("name", list(HF))
def test_every_hf_zoo_model_round_trips_with_a_fill(name, tmp_path):
    """Tied embeddings (GPT-2), keys transformers renames on save (ViT), encoders and convnets."""
    e = ZOO[name]
    m, x = e.build(), e.inputs()
    g = flowprune.trace(m, x)
    ids = [c.id for c in g.candidates("branch")][:1] + [c.id for c in g.candidates("layer")][-1:]
    small = flowprune.apply(m, g.plan(ids, fill="linear"), data=[x])
    back = flowprune.load_pretrained(
        flowprune.save_pretrained(small, tmp_path / name),
        **({} if "conv" in name or "resnet" in name else EAGER),
    )
    with torch.no_grad():
        assert torch.equal(
            tensor_leaves(call_model(back, x))[0], tensor_leaves(call_model(small, x))[0]
        )


# ---------------------------------------------------------------------------------------------------
# saving never destroys


def test_foreign_folder_is_refused_even_with_overwrite_and_left_untouched(models, tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("precious")
    (d / "sub").mkdir()
    (d / "sub" / "data.bin").write_bytes(b"\x00\x01")
    before = snapshot(d)
    for overwrite in (False, True):
        with pytest.raises(
            InputError, match=r"mine.*not written by flowprune.*even with overwrite=True"
        ):
            flowprune.save_pretrained(models["base"], d, overwrite=overwrite)
    assert snapshot(d) == before and not temps(tmp_path)


def test_plain_hf_checkpoint_is_a_foreign_folder(models, tmp_path):
    models["base"].save_pretrained(tmp_path / "hf")
    before = snapshot(tmp_path / "hf")
    with pytest.raises(InputError, match="not written by flowprune"):
        flowprune.save_pretrained(models["deleted"], tmp_path / "hf", overwrite=True)
    assert snapshot(tmp_path / "hf") == before


def test_file_target_is_refused(models, tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"keep me")
    for overwrite in (False, True):
        with pytest.raises(InputError, match=r"model\.bin.*is a file"):
            flowprune.save_pretrained(models["base"], f, overwrite=overwrite)
    assert f.read_bytes() == b"keep me" and not temps(tmp_path)


def test_symlink_target_is_refused(models, tmp_path):
    real = flowprune.save_pretrained(models["base"], tmp_path / "real")
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    with pytest.raises(InputError, match="symbolic link"):
        flowprune.save_pretrained(models["deleted"], tmp_path / "link", overwrite=True)
    assert (tmp_path / "link").is_symlink()


@pytest.mark.parametrize("path", [".", "", "..", "sub/..", "CWD", "HOME", "ROOT"])
def test_cwd_its_parents_home_and_root_are_refused(models, tmp_path, monkeypatch, path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "flowprune.json").write_text(
        '{"flowprune": "0", "plans": []}'
    )  # even if it looks like ours
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    path = {"CWD": str(work), "HOME": str(tmp_path / "home"), "ROOT": os.path.abspath(os.sep)}.get(
        path, path
    )
    with pytest.raises(
        InputError, match="current directory, one of its parents, the home directory"
    ):
        flowprune.save_pretrained(models["base"], path, overwrite=True)
    assert sorted(os.listdir(work)) == ["flowprune.json"] and not temps(tmp_path)


def test_overwrite_replaces_a_flowprune_folder_whole(models, x, tmp_path):
    d = tmp_path / "m"
    flowprune.save_pretrained(models["base"], d, max_shard_size="60KB")
    assert len(list(d.glob("*.safetensors"))) > 1
    with pytest.raises(
        InputError, match="already holds a model saved by flowprune: pass overwrite=True"
    ):
        flowprune.save_pretrained(models["branches"], d)
    assert torch.equal(logits(load(d), x), logits(models["base"], x))  # refused: old still complete
    flowprune.save_pretrained(models["branches"], d, overwrite=True)
    assert sorted(p.name for p in d.glob("*.safetensors")) == [
        "model.safetensors"
    ]  # no old shard left
    assert not (d / "model.safetensors.index.json").exists()
    assert torch.equal(logits(load(d), x), logits(models["branches"], x))
    assert not temps(tmp_path)


def test_an_empty_folder_counts_as_absent(models, x, tmp_path):
    (tmp_path / "m").mkdir()
    flowprune.save_pretrained(models["base"], tmp_path / "m")
    assert torch.equal(logits(load(tmp_path / "m"), x), logits(models["base"], x))


def test_exchange_swaps_two_folders_atomically(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "f").write_text("a")
    if not saving._exchange(a, b):
        pytest.skip(
            "no renameat2(RENAME_EXCHANGE) on this OS or file system: the fallback is tested below"
        )
    assert (b / "f").read_text() == "a" and not list(a.iterdir())


# ---------------------------------------------------------------------------------------------------
# crash safety: a Ctrl-C (in process) or a kill (forked child) at each step of the swap

# the swap's file-system steps for each mode, in order: (function, what the target holds if cut there)
STEPS = {
    "exchange": [("_exchange", "old"), ("_rmtree", "new")],
    "fallback": [("_rename", "old"), ("_rename", "old"), ("_rmtree", "new")],
}
CASES = [(mode, k) for mode, steps in STEPS.items() for k in range(len(steps))]


def _force_mode(mode: str, tmp_path: Path, patch) -> None:
    if mode == "fallback":
        patch(
            saving, "_exchange", lambda a, b: False
        )  # e.g. macOS, or a file system answering EINVAL
    else:
        probe = tmp_path / ".probe"
        (probe / "a").mkdir(parents=True)
        (probe / "b").mkdir()
        ok = saving._exchange(probe / "a", probe / "b")
        saving.shutil.rmtree(probe)
        if not ok:
            pytest.skip("no RENAME_EXCHANGE on this file system")


def _interrupt_at(mode: str, k: int, patch, stop) -> None:
    """Make the k-th call to the swap's steps call ``stop()`` instead (a half-done rmtree first deletes one
    file); calls after it run normally, as the interrupted code's own clean-up would."""
    calls = {"n": 0}

    def wrap(name, real):
        def step(*args):
            calls["n"] += 1
            if calls["n"] - 1 == k:
                if name == "_rmtree":
                    next(p for p in Path(args[0]).rglob("*") if p.is_file()).unlink()
                stop()
            return real(*args)

        return step

    for name in {name for name, _ in STEPS[mode]}:
        patch(saving, name, wrap(name, getattr(saving, name)))


def _expected(models, x, which: str) -> torch.Tensor:
    return logits(models["base"] if which == "old" else models["branches"], x)


@pytest.mark.parametrize("mode, k", CASES)
def test_ctrl_c_at_each_swap_step_leaves_old_or_new_and_no_temps(
    models, x, tmp_path, monkeypatch, mode, k
):
    d = tmp_path / "m"
    flowprune.save_pretrained(models["base"], d)
    _force_mode(mode, tmp_path, monkeypatch.setattr)

    def ctrl_c():
        raise KeyboardInterrupt

    _interrupt_at(mode, k, monkeypatch.setattr, ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        flowprune.save_pretrained(models["branches"], d, overwrite=True)
    monkeypatch.undo()
    assert torch.equal(logits(load(d), x), _expected(models, x, STEPS[mode][k][1]))
    assert not temps(tmp_path)
    flowprune.save_pretrained(models["branches"], d, overwrite=True)
    assert torch.equal(logits(load(d), x), _expected(models, x, "new")) and not temps(tmp_path)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("repair", ["load", "save"])
@pytest.mark.parametrize("mode, k", CASES)
def test_kill_at_each_swap_step_is_repaired_by_the_next_load_or_save(
    models, x, tmp_path, monkeypatch, mode, k, repair
):
    d = tmp_path / "m"
    flowprune.save_pretrained(models["base"], d)
    new: list[Path] = []
    monkeypatch.setattr(
        saving, "_swap", lambda tmp, target: new.append(tmp)
    )  # write the new folder only
    flowprune.save_pretrained(models["branches"], d, overwrite=True)
    monkeypatch.undo()
    assert len(new) == 1 and new[0].parent == tmp_path
    _force_mode(mode, tmp_path, monkeypatch.setattr)
    pid = os.fork()
    if pid == 0:  # the child is killed at step k: no except/finally clause runs
        try:
            _interrupt_at(
                mode, k, lambda obj, name, value: setattr(obj, name, value), lambda: os._exit(9)
            )
            saving._swap(new[0], d.absolute())
        finally:
            os._exit(0)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 9
    monkeypatch.undo()
    fallback_gap = (
        mode == "fallback" and k == 1
    )  # between the two renames: the next call puts old back
    assert d.is_dir() or fallback_gap
    assert temps(tmp_path), "the killed swap left its temp folder"
    if (
        repair == "save"
    ):  # the old folder is put back first, so this save without overwrite is refused
        with pytest.raises(InputError, match="already holds a model saved by flowprune"):
            flowprune.save_pretrained(models["branches"], d)
        assert not temps(tmp_path)
    assert torch.equal(logits(load(d), x), _expected(models, x, STEPS[mode][k][1]))
    flowprune.save_pretrained(models["branches"], d, overwrite=True)
    assert torch.equal(logits(load(d), x), _expected(models, x, "new")) and not temps(tmp_path)


def test_interrupted_write_leaves_the_old_folder_and_no_temps(models, x, tmp_path, monkeypatch):
    d = flowprune.save_pretrained(models["base"], tmp_path / "m")

    def dies(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(saving, "_manifest", dies)
    with pytest.raises(KeyboardInterrupt):
        flowprune.save_pretrained(models["branches"], d, overwrite=True)
    assert torch.equal(logits(load(d), x), logits(models["base"], x)) and not temps(tmp_path)


def test_stale_temps_of_this_code_only_are_cleaned(models, tmp_path):
    (tmp_path / ".m.fpsave-new-abc123").mkdir()
    (tmp_path / ".m.fpsave-new-abc123" / "half.safetensors").write_bytes(b"x")
    (tmp_path / ".m.backup").mkdir()  # someone else's: kept
    (tmp_path / ".mm.fpsave-new-abc").mkdir()  # another target's: kept
    flowprune.save_pretrained(models["base"], tmp_path / "m")
    assert temps(tmp_path) == [".m.backup", ".mm.fpsave-new-abc"]


# ---------------------------------------------------------------------------------------------------
# loading never invents weights


@pytest.fixture
def saved(models, tmp_path) -> Path:
    return flowprune.save_pretrained(models["mean"], tmp_path / "m")


def _rewrite_manifest(d: Path, edit) -> None:
    """Edit flowprune.json and re-sign it, as a careless tool (not a corrupt disk) would."""
    man = json.loads((d / "flowprune.json").read_text())
    edit(man)
    man["sha256"] = saving._manifest_digest(man)
    (d / "flowprune.json").write_text(json.dumps(man))


def test_folder_without_manifest_is_refused(saved):
    (
        saved / "flowprune.json"
    ).unlink()  # used to load with a re-initialised MLP and attention, silently
    with pytest.raises(
        CheckpointError,
        match=r"no flowprune\.json.*not written by flowprune\.save_pretrained"
        r".*from_pretrained",
    ):
        load(saved)


def test_plain_hf_checkpoint_is_refused_by_load_pretrained(models, tmp_path):
    models["base"].save_pretrained(tmp_path / "hf")
    with pytest.raises(
        CheckpointError, match="not written by flowprune.*AutoModelForCausalLM.from_pretrained"
    ):
        load(tmp_path / "hf")


def _bad_json(d):
    (d / "flowprune.json").write_text((d / "flowprune.json").read_text()[:-20])


def _edited_plan(d):
    man = json.loads((d / "flowprune.json").read_text())
    man["plans"][0]["replacements"][0]["path"] = "model.layers.2.self_attn"
    (d / "flowprune.json").write_text(json.dumps(man))


def _flipped_byte(d):
    data = bytearray((d / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # a weight's last byte: header and size unchanged
    (d / "model.safetensors").write_bytes(bytes(data))


def _truncated(d):
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])


def _rewritten(d, rename: bool):
    state = load_file(d / "model.safetensors")
    k = "model.layers.0.mlp.down_proj.weight"
    if rename:
        state["model.layers.0.mlp.down_proj.weights"] = state.pop(k)
    else:
        state[k] = state[k].reshape(-1, 2).contiguous()
    save_file(state, d / "model.safetensors", metadata={"format": "pt"})


def _extra_shard(d):
    (d / "model-extra.safetensors").write_bytes((d / "model.safetensors").read_bytes())


def _legacy(d):
    _rewrite_manifest(
        d, lambda man: [man.pop(k) for k in ("format", "files", "tensors", "state_dict")]
    )


def _mangled(d):
    _rewrite_manifest(d, lambda man: man.update(files=["model.safetensors"]))


def _extra_layer(d):
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_hidden_layers"] += 1  # the config is not hashed: the post-load check catches this
    (d / "config.json").write_text(json.dumps(cfg))


def _narrower_mlp(d):
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] //= 2
    (d / "config.json").write_text(json.dumps(cfg))


BREAKAGES = {
    "manifest_bad_json": (_bad_json, r"flowprune\.json is not valid JSON"),
    "manifest_edited": (_edited_plan, r"flowprune\.json was modified after saving"),
    "manifest_legacy": (_legacy, r"flowprune\.json was written by flowprune .* cannot be verified"),
    "manifest_mangled": (_mangled, r"flowprune\.json is malformed"),
    "shard_deleted": (
        lambda d: (d / "model.safetensors").unlink(),
        r"model\.safetensors is missing",
    ),
    "fills_deleted": (
        lambda d: (d / "flowprune-fills.safetensors").unlink(),
        r"flowprune-fills\.safetensors is missing",
    ),
    "shard_truncated": (_truncated, r"model\.safetensors is truncated"),
    "shard_flipped_byte": (
        _flipped_byte,
        r"model\.safetensors differs from what was saved \(SHA-256",
    ),
    "tensor_renamed": (
        lambda d: _rewritten(d, True),
        (
            r"model\.safetensors does not hold .* missing \['model\.layers\.0\.mlp\.down_proj\.weight'\]"
            r".*unexpected \['model\.layers\.0\.mlp\.down_proj\.weights'\]"
        ),
    ),
    "tensor_reshaped": (
        lambda d: _rewritten(d, False),
        r"model\.safetensors does not hold .*mlp\.down_proj\.weight is F32\[.*\], saved as F32\[32, 64\]",
    ),
    "extra_weight_file": (_extra_shard, r"model-extra\.safetensors is a weight file not listed"),
    "config_missing": (lambda d: (d / "config.json").unlink(), r"config\.json is missing"),
    "config_more_layers": (
        _extra_layer,
        r"lacks the weights \['model\.layers\.3\..*initialised them at random",
    ),
    "config_other_shapes": (_narrower_mlp, r"config\.json does not fit the saved weights"),
}


@pytest.mark.parametrize("case", list(BREAKAGES))
def test_each_broken_folder_is_one_clear_error_naming_the_file(saved, case):
    breakage, message = BREAKAGES[case]
    breakage(saved)
    with pytest.raises(CheckpointError, match=message) as info:
        load(saved)
    assert isinstance(info.value, PlanError)  # callers catching PlanError keep working
    assert str(saved) in str(info.value)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="is not a folder"):
        load(tmp_path / "nothing")
