"""The training loop and what it wires together: tasks, rollouts, advantages, the policy worker, checkpoints,
evaluation, SFT, logging and plots. `agentrl train` and `agentrl sft` call `train` and `run_sft`."""
