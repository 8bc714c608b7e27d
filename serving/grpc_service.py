"""TF Serving's gRPC services with the official protos: PredictionService (Predict, GetModelMetadata)
and ModelService (GetModelStatus). Other methods answer UNIMPLEMENTED."""

from __future__ import annotations

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from .batching import Predictor
from .servables import ModelManager, ServingError


async def _abort(context, error: ServingError):
    await context.abort(getattr(grpc.StatusCode, error.grpc_code), str(error))


def _loaded(manager: ModelManager, model_spec):
    version = model_spec.version.value if model_spec.HasField("version") else None
    return manager.get(model_spec.name, version, model_spec.version_label or None)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata over ``manager``'s models (batched if ``predictor`` batches)."""

    def __init__(self, manager: ModelManager, predictor: Predictor):
        self.manager = manager
        self.predictor = predictor

    async def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        try:
            loaded = _loaded(self.manager, request.model_spec)
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
            outputs = await self.predictor.predict(loaded, signature_name, inputs)
        except ServingError as error:
            await _abort(context, error)
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
            loaded = _loaded(self.manager, request.model_spec)
            if list(request.metadata_field) != ["signature_def"]:
                raise ServingError("metadata_field must be [\"signature_def\"], the only field served")
        except ServingError as error:
            await _abort(context, error)
            return get_model_metadata_pb2.GetModelMetadataResponse()
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, value in loaded.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(value)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = loaded.name
        response.model_spec.version.value = loaded.version
        response.metadata["signature_def"].Pack(signature_map)
        return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus, as TF Serving's: every version seen (unloaded ones END), or the one asked for."""

    def __init__(self, manager: ModelManager):
        self.manager = manager

    async def GetModelStatus(self, request, context):
        try:
            if not request.HasField("model_spec"):
                raise ServingError("Missing ModelSpec")
            spec = request.model_spec
            # As TF Serving, a version label does not narrow the answer: only a version number does.
            states = self.manager.status(spec.name, spec.version.value if spec.HasField("version") else None)
        except ServingError as error:
            await _abort(context, error)
            return get_model_status_pb2.GetModelStatusResponse()
        response = get_model_status_pb2.GetModelStatusResponse()
        for version, state, error in states:
            status = response.model_version_status.add(version=version)
            status.state = get_model_status_pb2.ModelVersionStatus.State.Value(state)
            if error:
                status.status.error_code = 2  # UNKNOWN
                status.status.error_message = error
        return response


def add_to_server(server: grpc.aio.Server, manager: ModelManager, predictor: Predictor | None = None) -> None:
    """Adds both services over ``manager``'s models to ``server``."""
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(manager, predictor or Predictor()), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager), server)
