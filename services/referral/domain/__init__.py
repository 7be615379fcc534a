"""Pure domain code of the router: who receives a referral and what each partner may see.

Nothing here talks to Kafka, gRPC, OpenTelemetry or the generated protobuf code. The adapters
translate a protobuf referral into the plain facts of :mod:`referral.domain.facts`, and the
decision of :mod:`referral.domain.routing` back into the contract, so that the policy (the part
auditors and operators care about) can be read, tested and reasoned about on its own.
"""
