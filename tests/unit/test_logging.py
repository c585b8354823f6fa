"""Lines logged while a message is handled carry its event_id and correlation_id."""

import structlog
from structlog.testing import capture_logs

from blobledger.infra.logging import bound_to, get_logger
from blobledger.schemas.events import Envelope, MetadataUpdated, new_id


def test_bound_to_adds_ids_to_every_line():
    event = MetadataUpdated(Envelope(object_id=new_id(), actor="a"), patch_json="{}")
    log = get_logger("t")
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        with bound_to(event, stage="fold"):
            log.info("inside")
        log.info("outside")
    inside, outside = logs
    assert inside["event_id"] == event.event_id
    assert inside["correlation_id"] == event.envelope.correlation_id
    assert inside["stage"] == "fold"
    assert "event_id" not in outside
