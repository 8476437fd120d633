"""Lightning glue: the training modules, callbacks, checkpoint IO and the run entry point."""
