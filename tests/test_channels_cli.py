"""``flowprune prune --granularity channels``: magnitude unit pruning of the shipped LM and a zoo CNN."""

import json

import torch
import transformers

import flowprune
from flowprune.cli import main


def test_channels_on_the_shipped_lm_reload_with_plain_from_pretrained(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["prune", "--granularity", "channels", "--budget", "0.25", "--num-samples", "8"]
    argv += ["--seq-len", "64", "--out", str(out), "--json", "--no-progress"]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["params_after"] < res["params_before"] and res["heldout_ppl_after"] > 0
    # every layer loses the same share: the config says the new widths, so plain HF reloads it
    plain = transformers.AutoModelForCausalLM.from_pretrained(out / "model")
    ours = flowprune.load_pretrained(out / "model")
    assert sum(p.numel() for p in plain.parameters()) == res["params_after"]
    ids = torch.randint(0, plain.config.vocab_size, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, ours(ids).logits, atol=1e-5, rtol=1e-5)
    kept = {g["id"]: g["units"] - len(res["removed"].get(g["id"], [])) for g in res["groups"]}
    mlp = [v for k, v in kept.items() if "mlp" in k]
    assert plain.config.intermediate_size == mlp[0] and len(set(mlp)) == 1


def test_channels_on_a_zoo_cnn(tmp_path, capsys):
    argv = ["prune", "--model", "zoo:resnet_basic", "--granularity", "channels", "--budget", "0.5"]
    argv += ["--out", str(tmp_path), "--json", "--no-progress"]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    plan = flowprune.Plan.from_json(tmp_path / "plan.json")
    assert res["params_before"] - res["params_after"] == plan.params_removed > 0
    # half of every prunable group's channels
    for g in res["groups"]:
        if g["reason"] is None:
            assert len(res["removed"][g["id"]]) == g["units"] // 2


def test_channels_refuses_layer_criteria_and_fills(capsys):
    argv = ["prune", "--granularity", "channels", "--criterion", "shortgpt", "--out", "x"]
    assert main(argv) == 2
    assert "magnitude" in capsys.readouterr().err
    argv = ["prune", "--granularity", "channels", "--fill", "linear", "--out", "x"]
    assert main(argv) == 2
    assert "obs" in capsys.readouterr().err
    assert main(["prune", "--fill", "obs", "--out", "x"]) == 2
    assert "--granularity channels" in capsys.readouterr().err


def test_obs_scores_and_refit_under_a_parameter_budget(tmp_path, capsys):
    def run(*extra):
        argv = ["prune", "--granularity", "channels", "--budget", "0.25", "--num-samples", "8"]
        argv += ["--seq-len", "64", "--out", str(tmp_path), "--json", "--no-progress", *extra]
        assert main(argv) == 0
        return json.loads(capsys.readouterr().out)

    plain = run("--criterion", "magnitude")
    refit = run("--criterion", "obs", "--fill", "obs", "--scope", "global")
    share = 1 - refit["params_after"] / refit["params_before"]
    assert 0.24 <= share <= 0.26
    # the refit keeps the model far closer to the original than magnitude alone (65 vs 115 here)
    assert refit["heldout_ppl_after"] < plain["heldout_ppl_after"]
