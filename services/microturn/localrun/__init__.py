"""Run the whole system on one machine: supervised child processes for NATS, Ray and each service."""
