"""The examples of the docs run as tests (`make test` collects docs/examples), so they cannot rot.

Each example is an app as it would be in your project (docs/first-workflow.md, docs/porting.md).
In your project the app is in INSTALLED_APPS and dagger_django imports its `workflows` module at
start-up; the demo project does not install these, so their modules are imported here.
"""

import importlib

for module in ("signups.workflows", "shipping.workflows"):
    importlib.import_module(module)
