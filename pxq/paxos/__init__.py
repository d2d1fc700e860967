"""Multi-Paxos replicated log: acceptor, proposer, learner, master lease, catch-up, checkpoint."""
