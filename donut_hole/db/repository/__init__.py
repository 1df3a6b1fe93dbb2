"""Repository functions: every read and write of the pipeline's tables, as plain functions of a session.

They flush but never commit: the caller owns the transaction (``with session_scope(factory) as session``),
so several calls can form one unit of work. They know nothing of Celery or HTTP. By part:
:mod:`.batches` (creating, progress, the one definition of a finished batch, listing, deleting, results),
:mod:`.documents` (reading state, pages, sending, retries, failures), :mod:`.results` (extractions and
fields, reviews, search, models) and :mod:`.common` (errors, limits, row shapes, helpers). Everything is
used as ``repository.<name>``.
"""

from donut_hole.db.repository.batches import *  # noqa: F403
from donut_hole.db.repository.common import *  # noqa: F403
from donut_hole.db.repository.documents import *  # noqa: F403
from donut_hole.db.repository.results import *  # noqa: F403
