"""asyncio gRPC client (grpc.aio): the methods of GrpcClient as coroutines.

For apps that keep hundreds of requests in flight on one event loop (an aiohttp or
FastAPI service fanning out to the model server) without a thread per request.

    import asyncio
    from clients.aio import AsyncGrpcClient

    async def main():
        async with AsyncGrpcClient("localhost:8500", model="effnet") as client:
            results = await asyncio.gather(*(client.predict([path]) for path in paths))
            print(await client.status())

    asyncio.run(main())

The channel is created lazily inside the running event loop (grpc.aio channels belong to
one loop), so a client can be constructed anywhere.
"""

from __future__ import annotations

import types

import grpc
import grpc.aio

from clients import client_base
from clients import retry as retry_lib
from clients.grpc_client import Metadata, _GrpcCommon, _make_stubs, error_from_rpc
from clients.results import ModelMetadata, Prediction, VersionStatus


class AsyncGrpcClient(_GrpcCommon):
    """asyncio twin of GrpcClient: same arguments (channel: a grpc.aio.Channel), results
    and errors.

    Image encoding (file reads, optional downscaling) runs in the default executor so the
    event loop is not blocked by a large photo.
    """

    def _ensure_channel(self) -> dict:
        if self.channel is None:
            if self.tls:
                self.channel = grpc.aio.secure_channel(self.address, self._credentials,
                                                       self._options)
            else:
                self.channel = grpc.aio.insecure_channel(self.address, self._options)
            self._stubs = _make_stubs(self.channel)
        return self._stubs

    async def _invoke(self, method: str, request, timeout, metadata):
        stub = self._ensure_channel()[method]
        call_metadata = self._call_metadata(metadata)

        async def attempt(remaining: float | None):
            try:
                return await stub(request, timeout=remaining, metadata=call_metadata)
            except grpc.RpcError as error:
                raise error_from_rpc(error) from None

        return await retry_lib.call_async(attempt, self.retry, self._timeout(timeout))

    async def _encode_async(self, image_inputs) -> list[bytes]:
        import asyncio

        if all(isinstance(i, (bytes, bytearray)) for i in _as_list(image_inputs)) \
                and self.max_size is None:
            return self._encode(image_inputs)  # Nothing slow to do: skip the thread hop.
        return await asyncio.get_running_loop().run_in_executor(None, self._encode,
                                                                image_inputs)

    async def predict(self, image_inputs, *, top_k: int | None = None,
                      signature: str | None = None,
                      timeout: float | None | types.EllipsisType = ...,
                      metadata: Metadata | None = None) -> list[Prediction]:
        """See GrpcClient.predict."""
        encoded = await self._encode_async(image_inputs)
        response = await self._invoke("predict", self.predict_request(encoded, signature),
                                      timeout, metadata)
        return self._predictions(response, len(encoded), top_k)

    async def classify(self, image_inputs, *, top_k: int | None = None,
                       signature: str = client_base.DEFAULT_CLASSIFY_SIGNATURE,
                       timeout: float | None | types.EllipsisType = ...,
                       metadata: Metadata | None = None) -> list[Prediction]:
        """See GrpcClient.classify."""
        encoded = await self._encode_async(image_inputs)
        response = await self._invoke("classify", self.classify_request(encoded, signature),
                                      timeout, metadata)
        return self._classifications(response, len(encoded), top_k)

    async def metadata(self, *, timeout: float | None | types.EllipsisType = ...,
                       metadata: Metadata | None = None) -> ModelMetadata:
        """See GrpcClient.metadata."""
        response = await self._invoke("metadata", self.metadata_request(), timeout, metadata)
        return self._model_metadata(response)

    async def status(self, *, timeout: float | None | types.EllipsisType = ...,
                     metadata: Metadata | None = None) -> list[VersionStatus]:
        """See GrpcClient.status."""
        response = await self._invoke("status", self.status_request(), timeout, metadata)
        return self._statuses(response)

    async def close(self) -> None:
        if self.channel is not None and self._owns_channel:
            await self.channel.close()
            self.channel = None

    async def __aenter__(self) -> AsyncGrpcClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()


def _as_list(image_inputs) -> list:
    return image_inputs if isinstance(image_inputs, (list, tuple)) else [image_inputs]
