"""Session-aware rollouts of model versions: new sessions move to a candidate by weight, live ones
finish on the version they started on, and a candidate that breaches its SLOs is rolled back.

``routing`` (the table edges read), ``analysis`` (candidate vs stable), ``machine`` (the pure state
machine, ``decide``). See docs/ROLLOUT.md."""
