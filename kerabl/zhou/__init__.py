"""The Z study (Zhou et al. 2018): single channel units ablated, and what predicts the damage.

Stages in order: `attributes` (L1 norm, class correlation, selectivity, top images), `ablation`
(single-unit, random-direction, greedy and random-order ablation), `study` (`run_z_study`),
`results` (`ZResults`, CSV), `figures`.
"""
