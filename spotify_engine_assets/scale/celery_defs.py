"""The project's definitions with ``dagster_celery.celery_executor`` as the executor: every step
of a run launched from this module is a Celery task that a ``dagster-celery`` worker executes.
Workers rebuild the job from this module path, so it must be importable on every worker machine.
Needs the ``scale`` extra (``pip install -e '.[scale]'``)."""

import dagster as dg
from dagster_celery import celery_executor

from .. import definitions as _project  # a module, not a second Definitions at module scope

defs = dg.Definitions.merge(_project.defs, dg.Definitions(executor=celery_executor))
