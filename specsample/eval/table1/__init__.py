"""Table 1 of Chen et al. (2023): grid, cell store, cells, report and plots; `reproduce.run`."""
