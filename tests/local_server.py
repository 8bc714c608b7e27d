"""Runs the local TF Serving-protocol server in a background thread on free loopback ports (tests)."""

import asyncio
import threading

from nopeek_tf.training.distribute import free_ports
from serving import server
from serving.servables import ModelManager


class LocalServer:
    """The REST and gRPC servers of serving.server over ``base_paths``, until stop()."""

    def __init__(self, base_paths, max_body_bytes=16 * 1024 * 1024, poll_seconds=None, **serve_kwargs):
        self.manager = ModelManager(base_paths)
        self.manager.configure(self.manager.configs)
        if poll_seconds:
            self.manager.start_polling(poll_seconds)
        self.rest_port, self.grpc_port = free_ports(2)
        self._ready = threading.Event()
        self._error = None

        def run():
            async def main():
                self._loop = asyncio.get_running_loop()
                self._stop = asyncio.Event()
                ready = asyncio.Event()
                task = asyncio.create_task(server.serve(
                    self.manager, "127.0.0.1", self.rest_port, self.grpc_port, max_body_bytes,
                    ready=ready, stop=self._stop, **serve_kwargs))
                waiter = asyncio.create_task(ready.wait())
                await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
                self._ready.set()
                await task
            try:
                asyncio.run(main())
            except Exception as error:  # surfaced by __init__ or stop()
                self._error = error
                self._ready.set()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        self._ready.wait(60)
        if self._error:
            raise self._error

    @property
    def rest(self):
        return f"127.0.0.1:{self.rest_port}"

    @property
    def grpc(self):
        return f"127.0.0.1:{self.grpc_port}"

    def stop(self):
        self.manager.stop()
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


class Capture:
    """Keeps every request body the local server receives (REST) and every gRPC request message.

    ``LocalServer(..., **capture.server_hooks())`` installs it.
    """

    def __init__(self):
        import grpc
        from aiohttp import web

        self.rest: list[bytes] = []
        self.grpc: list = []

        @web.middleware
        async def rest_hook(request, handler):
            self.rest.append(await request.read())
            return await handler(request)

        captured = self.grpc

        class GrpcHook(grpc.aio.ServerInterceptor):
            async def intercept_service(self, continuation, details):
                handler = await continuation(details)
                if handler is None or handler.unary_unary is None:
                    return handler
                inner = handler.unary_unary

                async def unary(request, context):
                    captured.append(request)
                    return await inner(request, context)
                return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer,
                                                           handler.response_serializer)

        self._rest_hook, self._grpc_hook = rest_hook, GrpcHook()

    def server_hooks(self) -> dict:
        return {"rest_middlewares": [self._rest_hook], "grpc_interceptors": [self._grpc_hook]}
