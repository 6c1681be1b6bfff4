"""Tests run offline: nothing may wait on the model or dataset hub."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

# FLOWPRUNE_TEST_THREADS: .ci/run runs the suite with 1 and with 2 threads; every assertion must hold
# under either (a margin that another reduction order can flip is not a test)
torch.set_num_threads(
    int(os.environ.get("FLOWPRUNE_TEST_THREADS", max(1, min(2, torch.get_num_threads()))))
)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def pruned_report(tmp_path_factory):
    """(report, report.html path): a 4-layer Llama pruned by 2 removals, with loss curves for every
    strategy; shared by the report and browser tests."""
    import flowprune
    from flowprune.zoo import ZOO

    gen = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(0, 128, (2, 12), generator=gen)} for _ in range(2)]
    _, report = flowprune.prune(
        ZOO["llama"].build(),
        data,
        flowprune.Budget(count=2),
        progress=False,
        criteria=("flow", "loss", "taylor2"),
    )
    report.loss_curves(4, strategies=("one_shot", "quadratic", "greedy"))
    path = tmp_path_factory.mktemp("report") / "report.html"
    report.to_html(path)
    return report, path
