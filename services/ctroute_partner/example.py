"""A complete partner: acknowledge each delivery, then accept it once a case is opened.

    set -a; . ./partner.env; set +a     # the settings `refctl partner add` printed
    python -m ctroute_partner.example

Deliveries carry only the fields the partner may see; this example prints ids and priority
only, as a partner's logs should.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

from ctroute.partner.v1 import delivery_pb2
from ctroute.referral.v1 import lifecycle_pb2
from ctroute_partner import STATUS, PartnerInbox, PartnerSettings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = PartnerSettings.from_env()
    with PartnerInbox(settings, group="example", seen_path="example-seen.sqlite3") as inbox:

        def handle(delivery: delivery_pb2.PartnerDelivery) -> None:
            priority = lifecycle_pb2.Priority.Name(delivery.priority)
            print(f"{delivery.delivery_id}: referral {delivery.referral.referral_id} {priority}")
            inbox.report(delivery, STATUS.DELIVERY_STATE_ACKNOWLEDGED)
            inbox.report(delivery, STATUS.DELIVERY_STATE_ACCEPTED)

        def stop(_signum: int, _frame: FrameType | None) -> None:
            inbox.stop()

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        print(f"receiving deliveries for {settings.partner} (Ctrl-C to stop)")
        inbox.run(handle)


if __name__ == "__main__":
    main()
