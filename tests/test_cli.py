"""The flowprune command: JSON output, plan file, and one-line errors with exit code 2."""

import json

import flowprune
from flowprune.cli import main


def test_analyze_json(capsys):
    assert main(["analyze", "--model", "llama", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    kinds = [c["kind"] for c in out["candidates"]]
    assert kinds.count("branch") == 8 and kinds.count("layer") == 4 and out["params"] == 45_344


def test_analyze_remove_writes_plan(tmp_path, capsys):
    assert main(["analyze", "--model", "mlp_skip", "--remove", "1", "--out", str(tmp_path)]) == 0
    plan = flowprune.Plan.from_json(tmp_path / "plan.json")
    assert [r.id for r in plan.removals] == ["blocks.2:layer"]
    assert "params 13,642 -> " in capsys.readouterr().out


def test_bad_input_is_one_line_and_exit_2(capsys):
    assert main(["analyze", "--model", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("flowprune: error: unknown model 'nope'") and "\n" not in err
    assert main(["analyze", "--model", "mlp_skip", "--remove", "9"]) == 2
    assert "only 3 layer candidates" in capsys.readouterr().err
