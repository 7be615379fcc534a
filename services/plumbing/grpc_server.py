"""gRPC server bootstrap: health, reflection and a clean stop, the same for every service."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent import futures

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

from plumbing.validation import FieldViolation

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""Transport limit; request-size limits with clear messages are enforced by each servicer."""

_tracer = trace.get_tracer("ctroute.plumbing.grpc")


class GrpcServer:
    """A started gRPC server with the standard health and reflection services."""

    def __init__(self, server: grpc.Server, port: int, health_servicer: health.HealthServicer):
        self.server = server
        self.port = port
        self._health = health_servicer

    def stop(self, grace: float = 5) -> None:
        """Report NOT_SERVING, finish calls in flight for up to `grace` seconds, then stop."""
        self._health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


def start_grpc_server(
    address: str,
    register: Callable[[grpc.Server], Sequence[str]],
    *,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    max_workers: int = 16,
    credentials: grpc.ServerCredentials | None = None,
) -> GrpcServer:
    """Start a server on `address` ("host:port", port 0 picks a free one); TLS with
    `credentials`, plaintext without (local test fixtures only).

    `register` adds the service's servicers and returns their full service names, which are
    announced through reflection and marked SERVING in the health service.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        interceptors=list(interceptors),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    service_names = list(register(server))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in service_names:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    if credentials is not None:
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}: the address is in use or invalid")
    server.start()
    return GrpcServer(server, port, health_servicer)


class TracingInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Opens a SERVER span per unary call, continuing the caller's trace if it sent one.

    Only the method name and status code are recorded: requests carry personal data.
    """

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        carrier = {key: value for key, value in handler_call_details.invocation_metadata or ()}
        behaviour = handler.unary_unary

        def traced(request: object, context: grpc.ServicerContext) -> object:
            service, _, name = method.lstrip("/").partition("/")
            with _tracer.start_as_current_span(
                method.lstrip("/"),
                context=propagate.extract(carrier),
                kind=SpanKind.SERVER,
                attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
            ) as span:
                try:
                    return behaviour(request, context)
                finally:
                    code = context.code()
                    span.set_attribute(
                        "rpc.grpc.status_code", code.value[0] if code is not None else 0
                    )

        return grpc.unary_unary_rpc_method_handler(
            traced,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def abort_invalid(context: grpc.ServicerContext, violations: list[FieldViolation]) -> None:
    """Answer INVALID_ARGUMENT listing every violation: a google.rpc.BadRequest in the status
    details (field path and reason each), and a one-line summary in the message."""
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.reason)
            for v in violations
        ]
    )
    detail = status_pb2.Status().details.add()
    detail.Pack(bad_request)
    summary = "; ".join(str(v) for v in violations)
    status = status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT,
        message=f"invalid request ({len(violations)} problem(s)): {summary}",
        details=[detail],
    )
    context.abort_with_status(rpc_status.to_status(status))
