"""A study: the config (schema, defaults, validation), its hyperparameter grid, the plan of jobs
(datasets x pairs x methods x grid points), the file layout every job reads and writes, and the
resources each job asks for. The Snakemake rules call only what lives here and the CLI."""
