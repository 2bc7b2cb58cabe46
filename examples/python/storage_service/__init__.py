"""A VWED storage service: storage locations in SQLite, changed over HTTP, shown live by vwed-hub.

A warehouse system calls this FastAPI service to occupy, release, lock or disable storage
locations, or to add and remove them. Each change is written together with the scene's ``rev``
in one transaction and then published through ``vwed_publisher``, so every hub's panels show it
at once; when a hub asks for a scene's state, the service answers from the same database.

Run it with ``python -m storage_service`` (or ``uvicorn storage_service.app:app``); see
README.md beside this file.
"""
