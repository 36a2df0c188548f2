"""Beat: the periodic scheduler. A schedule file, validated at start, fired from Redis.

Exactly one beat fires at a time: it holds a lock in Redis; a second one (as during a
rollout) stands by and takes over when the lock is released or expires.
"""
