"""The model benchmark's graph ablation: sampled against full-graph ESDPM and ESDPM-NCG."""

from eoca.bench.models import GRAPH_VARIANTS, run_graph_sampling, sampling_section


def test_graph_ablation_scores_every_variant_against_the_truth():
    frame = run_graph_sampling([0, 1], 300, 1, progress=lambda message: None)
    assert sorted(frame["variant"].unique()) == sorted(GRAPH_VARIANTS)
    assert len(frame) == 2 * len(GRAPH_VARIANTS)
    assert (frame["true_mae"] > 0).all() and (frame["tha_ratio"] <= 1 + 1e-9).all()
    text = sampling_section(frame, n_users=300, seeds=[0, 1], epochs=1)
    for variant in GRAPH_VARIANTS:
        assert variant in text
    assert "true-ETV MAE" in text and "%" in text
