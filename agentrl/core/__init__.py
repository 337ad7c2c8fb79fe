"""The ground floor every agentrl package stands on: types, configs, registries, files, progress, seeding,
paths, model loading, the generator contract and the CUDA IPC wire format.

`environments`, `retrievers` and `trainers` import from `agentrl` only through this package; it imports
nothing of theirs, nor anything else of `agentrl`.
"""
