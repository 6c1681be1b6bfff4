"""The flowprune command on the shipped tiny LM and the zoo: outputs, JSON, and one-line errors."""

import json

import pytest

import flowprune
from flowprune.cli import default_model, main


def test_shipped_model_is_there():
    d = default_model()
    assert (d / "model.safetensors").is_file() and (d / "tokenizer.json").is_file()


def test_prune_writes_a_loadable_smaller_model(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(
        [
            "prune",
            "--num-samples",
            "8",
            "--seq-len",
            "64",
            "--budget",
            "2",
            "--unit",
            "count",
            "--fill",
            "mean",
            "--out",
            str(out),
            "--json",
            "--no-progress",
        ]
    )
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["params_after"] < res["params_before"] and res["heldout_ppl_after"] > 0
    for f in ("plan.json", "report.json", "report.md", "model/config.json", "model/tokenizer.json"):
        assert (out / f).is_file(), f
    small = flowprune.load_pretrained(out / "model")
    assert sum(p.numel() for p in small.parameters()) == res["params_after"]
    assert len(flowprune.Plan.from_json(out / "plan.json").removals) == 2


def test_analyze_zoo_json_and_report(tmp_path, capsys):
    assert (
        main(
            [
                "analyze",
                "--model",
                "zoo:llama",
                "--criteria",
                "flow,loss",
                "--out",
                str(tmp_path),
                "--json",
                "--no-progress",
            ]
        )
        == 0
    )
    rep = json.loads(capsys.readouterr().out)
    kinds = [c["kind"] for c in rep["candidates"]]
    assert kinds.count("branch") == 8 and kinds.count("layer") == 4
    assert main(["report", str(tmp_path / "report.json"), "--md", str(tmp_path / "r.md")]) == 0
    assert "| rank | id |" in (tmp_path / "r.md").read_text()


@pytest.mark.parametrize(
    "argv, match",
    [
        (["analyze", "--model", "zoo:nope"], "unknown zoo model 'nope'"),
        (["prune", "--model", "/no/such/dir"], "could not load model '/no/such/dir'"),
        (["prune", "--data", "text:/no/such.txt"], "does not exist"),
        (["prune", "--data", "wikitext2"], "python-docs"),
        (["report", "/no/report.json"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, match, capsys):
    assert main(argv + (["--no-progress"] if argv[0] != "report" else [])) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("flowprune: error: ") and match in err and "\n" not in err


def test_an_encoder_without_lm_logits_is_judged_by_similarity(tmp_path, capsys):
    """A sentence-embedding style encoder (a plain HF folder, not written by flowprune): no next-token
    logits, so held-out perplexity does not apply; the command reports how close the pruned model's
    mean-pooled outputs stay to the original's instead of failing after the analysis."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(default_model())
    torch.manual_seed(0)
    enc = BertModel(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    )
    enc.save_pretrained(tmp_path / "enc")
    tok.save_pretrained(tmp_path / "enc")
    rc = main(
        [
            "prune",
            "--model",
            str(tmp_path / "enc"),
            "--num-samples",
            "4",
            "--seq-len",
            "16",
            "--budget",
            "1",
            "--unit",
            "count",
            "--criteria",
            "loss",
            "--curves",
            "0",
            "--out",
            str(tmp_path / "o"),
            "--json",
            "--no-progress",
        ]
    )
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert "heldout_ppl_after" not in res and -1 <= res["heldout_similarity"] <= 1
    assert res["params_after"] < res["params_before"]
