"""`trainer=surrogate`: a trial answered in milliseconds by models fitted on real trials (a table written by
benchmarks/surrogate_data.py, or any journals): whether the configuration trains or fails (OOM), its val_bpb with
the seed-to-seed noise measured in the data, and its cost in seconds. `data` reads and checks what the models are
fitted on, `model` fits and predicts, `python -m jaxhpo.surrogate fit` compares the candidate models."""
