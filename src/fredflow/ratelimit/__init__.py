"""Rate limiting: one algorithm and one code path for every runner -- the send schedule
(:mod:`~fredflow.ratelimit.schedule`, its policy :mod:`~fredflow.ratelimit.policy`), leased in process
by the asyncio runner (:mod:`~fredflow.ratelimit.local`) or over HTTP by the tasks of the thread and Dask
runners (:mod:`~fredflow.ratelimit.service`), and shared by every run on one api key
(:mod:`~fredflow.ratelimit.budget`: a file per key on this machine, or a Prefect global concurrency limit).
"""
