"""TF Serving's gRPC PredictionService (Predict, GetModelMetadata) with the official protos."""

from __future__ import annotations

import asyncio

import grpc
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from serving.servables import ModelManager, ServingError


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata over ``manager``'s models (other methods: UNIMPLEMENTED)."""

    def __init__(self, manager: ModelManager):
        self.manager = manager

    @staticmethod
    async def _abort(context, error: ServingError):
        await context.abort(getattr(grpc.StatusCode, error.grpc_code), str(error))

    def _loaded(self, model_spec):
        version = model_spec.version.value if model_spec.HasField("version") else None
        return self.manager.get(model_spec.name, version)

    async def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        try:
            loaded = self._loaded(request.model_spec)
            signature_name = request.model_spec.signature_name or None
            try:
                inputs = {key: tf.make_ndarray(tensor) for key, tensor in request.inputs.items()}
            except (TypeError, ValueError) as error:
                raise ServingError(f"cannot read the input tensors: {error}") from None
            specs = loaded.input_specs(signature_name)
            for key, value in inputs.items():
                if key in specs and value.dtype != specs[key].dtype.as_numpy_dtype:
                    raise ServingError(f"input '{key}' is {value.dtype}, the signature expects "
                                       f"{specs[key].dtype.name}")
            loop = asyncio.get_running_loop()
            outputs = await loop.run_in_executor(None, loaded.predict, signature_name, inputs)
        except ServingError as error:
            await self._abort(context, error)
            return predict_pb2.PredictResponse()
        response = predict_pb2.PredictResponse()
        response.model_spec.name = loaded.name
        response.model_spec.version.value = loaded.version
        response.model_spec.signature_name = signature_name or "serving_default"
        for key, value in outputs.items():
            if request.output_filter and key not in request.output_filter:
                continue
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response

    async def GetModelMetadata(self, request, context):
        try:
            loaded = self._loaded(request.model_spec)
            if list(request.metadata_field) != ["signature_def"]:
                raise ServingError("metadata_field must be [\"signature_def\"], the only field served")
        except ServingError as error:
            await self._abort(context, error)
            return get_model_metadata_pb2.GetModelMetadataResponse()
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, value in loaded.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(value)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = loaded.name
        response.model_spec.version.value = loaded.version
        response.metadata["signature_def"].Pack(signature_map)
        return response


def add_to_server(server: grpc.aio.Server, manager: ModelManager) -> None:
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(manager), server)
