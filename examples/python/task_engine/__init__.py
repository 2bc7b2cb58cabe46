"""A small VWED task engine: tasks run through named blocks, their results kept in SQLite.

Each block appends results to its task (``[取货] 前往货架`` RUNNING, then SUCCESS or FAILED).
Every result is written together with the task's new ``rev`` in one transaction and then
published through ``vwed_publisher``, with its index in the task's result list; when a hub asks
for a task's state, the engine answers from the same database.

Run it with ``python -m task_engine --tasks N --every S``; see README.md beside this file.
"""
