"""One module per experiment kind; each has train_and_evaluate(config, workdir)."""
