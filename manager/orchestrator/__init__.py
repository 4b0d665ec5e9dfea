"""Leader-only orchestrators: decision cores are pure functions over a Snapshot of the store;
thin Controller classes run them each leader tick and write the results through Raft."""
