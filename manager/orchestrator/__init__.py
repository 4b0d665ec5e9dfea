"""Leader-only orchestrators: decision cores are pure functions over a Snapshot of the store;
thin Orchestrator classes run them in the leader runtime and write the results through Raft."""
