"""The H study (Hayne et al. 2022): units on the selectivity x magnitude plane, an equal-count grid,
a probe and a rank deficit per cell.

Stages in order: `grid` (coordinates and cells), `probes` (decoding scores of a cell),
`ablation` (rank and rank deficit), `study` (`run_h_study`, the sweep over classes and layers),
`results` (`HResults`, CSV, shards), `stats` (the regression), `figures`.
"""
