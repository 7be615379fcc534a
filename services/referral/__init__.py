"""The referral service: the gRPC intake for component systems, and the router that decides who
receives each referral and what each partner may see."""
