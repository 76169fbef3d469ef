"""Rate limiting: one algorithm (:mod:`~fredflow.ratelimit.policy`), applied on one event loop
(:mod:`~fredflow.ratelimit.local`, the asyncio runner) or to a whole run across threads, processes
and machines (:mod:`~fredflow.ratelimit.service`: a token service the flow hosts, leased by each task).
"""
