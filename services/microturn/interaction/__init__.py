"""The interaction service: a Ray Serve deployment that holds sessions in the streaming engine,
ticks once per 200 ms micro-turn for all of them, and talks to the background model over NATS."""
