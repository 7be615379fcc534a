"""ctroute partner SDK: receive your deliveries and report their status, in a few lines.

    from ctroute_partner import PartnerInbox, PartnerSettings, STATUS

    settings = PartnerSettings.from_env()          # what `refctl partner add` printed
    with PartnerInbox(settings, group="intake-desk", seen_path="seen.sqlite3") as inbox:
        def handle(delivery):                      # a decoded, verified PartnerDelivery
            open_case(delivery)                    # your work; raise to have it retried
            inbox.report(delivery, STATUS.DELIVERY_STATE_ACKNOWLEDGED)
        inbox.run(handle)                          # until stop() or Ctrl-C

Guarantees: each delivery is handed to `handle` at least once; its offset is committed only
after `handle` returned, so a crash or an exception replays it; a delivery id already handled
(a redelivery, a replay) is skipped. Records that are not a valid delivery for this partner are
skipped and logged by offset, never by content. `python -m ctroute_partner.example` runs a
complete example.
"""

from ctroute_partner.inbox import STATUS, PartnerInbox, PartnerSettings, SeenDeliveries

__all__ = ["STATUS", "PartnerInbox", "PartnerSettings", "SeenDeliveries"]
