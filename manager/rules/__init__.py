"""Rules that more than one part of the manager decides with, each written once.

`uptodate`: whether a task still matches its service (the orchestrators, the API's
`_up-to-date` filter and `service ps`), and which spec changes need new tasks.
`ports`: which published ports a service or task holds and when two of them conflict (the
API's validation, the allocator, the scheduler's host-port filter).
"""
