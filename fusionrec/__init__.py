"""fusionrec's command line: composes the commands of model_store, indexer and app."""
