from codellama.fleet.v1 import generation_pb2 as _generation_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CompleteRequest(_message.Message):
    __slots__ = ("model", "prompt", "sampling", "options")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: str
    sampling: _generation_pb2.SamplingParams
    options: _generation_pb2.RequestOptions
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[str] = ..., sampling: _Optional[_Union[_generation_pb2.SamplingParams, _Mapping]] = ..., options: _Optional[_Union[_generation_pb2.RequestOptions, _Mapping]] = ...) -> None: ...

class CompleteResponse(_message.Message):
    __slots__ = ("request_id", "choices", "usage", "served_by", "timings")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    choices: _containers.RepeatedCompositeFieldContainer[_generation_pb2.Choice]
    usage: _generation_pb2.Usage
    served_by: _generation_pb2.ServedBy
    timings: _generation_pb2.Timings
    def __init__(self, request_id: _Optional[str] = ..., choices: _Optional[_Iterable[_Union[_generation_pb2.Choice, _Mapping]]] = ..., usage: _Optional[_Union[_generation_pb2.Usage, _Mapping]] = ..., served_by: _Optional[_Union[_generation_pb2.ServedBy, _Mapping]] = ..., timings: _Optional[_Union[_generation_pb2.Timings, _Mapping]] = ...) -> None: ...

class StreamCompleteRequest(_message.Message):
    __slots__ = ("model", "prompt", "sampling", "options")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: str
    sampling: _generation_pb2.SamplingParams
    options: _generation_pb2.RequestOptions
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[str] = ..., sampling: _Optional[_Union[_generation_pb2.SamplingParams, _Mapping]] = ..., options: _Optional[_Union[_generation_pb2.RequestOptions, _Mapping]] = ...) -> None: ...

class StreamCompleteResponse(_message.Message):
    __slots__ = ("request_id", "deltas", "usage", "served_by", "timings")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DELTAS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    deltas: _containers.RepeatedCompositeFieldContainer[_generation_pb2.ChoiceDelta]
    usage: _generation_pb2.Usage
    served_by: _generation_pb2.ServedBy
    timings: _generation_pb2.Timings
    def __init__(self, request_id: _Optional[str] = ..., deltas: _Optional[_Iterable[_Union[_generation_pb2.ChoiceDelta, _Mapping]]] = ..., usage: _Optional[_Union[_generation_pb2.Usage, _Mapping]] = ..., served_by: _Optional[_Union[_generation_pb2.ServedBy, _Mapping]] = ..., timings: _Optional[_Union[_generation_pb2.Timings, _Mapping]] = ...) -> None: ...

class InfillRequest(_message.Message):
    __slots__ = ("model", "prefix", "suffix", "order", "sampling", "options")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    SUFFIX_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    prefix: str
    suffix: str
    order: _generation_pb2.InfillOrder
    sampling: _generation_pb2.SamplingParams
    options: _generation_pb2.RequestOptions
    def __init__(self, model: _Optional[str] = ..., prefix: _Optional[str] = ..., suffix: _Optional[str] = ..., order: _Optional[_Union[_generation_pb2.InfillOrder, str]] = ..., sampling: _Optional[_Union[_generation_pb2.SamplingParams, _Mapping]] = ..., options: _Optional[_Union[_generation_pb2.RequestOptions, _Mapping]] = ...) -> None: ...

class InfillResponse(_message.Message):
    __slots__ = ("request_id", "choices", "usage", "served_by", "timings")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    choices: _containers.RepeatedCompositeFieldContainer[_generation_pb2.Choice]
    usage: _generation_pb2.Usage
    served_by: _generation_pb2.ServedBy
    timings: _generation_pb2.Timings
    def __init__(self, request_id: _Optional[str] = ..., choices: _Optional[_Iterable[_Union[_generation_pb2.Choice, _Mapping]]] = ..., usage: _Optional[_Union[_generation_pb2.Usage, _Mapping]] = ..., served_by: _Optional[_Union[_generation_pb2.ServedBy, _Mapping]] = ..., timings: _Optional[_Union[_generation_pb2.Timings, _Mapping]] = ...) -> None: ...

class StreamInfillRequest(_message.Message):
    __slots__ = ("model", "prefix", "suffix", "order", "sampling", "options")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    SUFFIX_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    prefix: str
    suffix: str
    order: _generation_pb2.InfillOrder
    sampling: _generation_pb2.SamplingParams
    options: _generation_pb2.RequestOptions
    def __init__(self, model: _Optional[str] = ..., prefix: _Optional[str] = ..., suffix: _Optional[str] = ..., order: _Optional[_Union[_generation_pb2.InfillOrder, str]] = ..., sampling: _Optional[_Union[_generation_pb2.SamplingParams, _Mapping]] = ..., options: _Optional[_Union[_generation_pb2.RequestOptions, _Mapping]] = ...) -> None: ...

class StreamInfillResponse(_message.Message):
    __slots__ = ("request_id", "deltas", "usage", "served_by", "timings")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DELTAS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    deltas: _containers.RepeatedCompositeFieldContainer[_generation_pb2.ChoiceDelta]
    usage: _generation_pb2.Usage
    served_by: _generation_pb2.ServedBy
    timings: _generation_pb2.Timings
    def __init__(self, request_id: _Optional[str] = ..., deltas: _Optional[_Iterable[_Union[_generation_pb2.ChoiceDelta, _Mapping]]] = ..., usage: _Optional[_Union[_generation_pb2.Usage, _Mapping]] = ..., served_by: _Optional[_Union[_generation_pb2.ServedBy, _Mapping]] = ..., timings: _Optional[_Union[_generation_pb2.Timings, _Mapping]] = ...) -> None: ...

class ChatRequest(_message.Message):
    __slots__ = ("model", "messages", "sampling", "options")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    messages: _containers.RepeatedCompositeFieldContainer[_generation_pb2.ChatMessage]
    sampling: _generation_pb2.SamplingParams
    options: _generation_pb2.RequestOptions
    def __init__(self, model: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_generation_pb2.ChatMessage, _Mapping]]] = ..., sampling: _Optional[_Union[_generation_pb2.SamplingParams, _Mapping]] = ..., options: _Optional[_Union[_generation_pb2.RequestOptions, _Mapping]] = ...) -> None: ...

class ChatResponse(_message.Message):
    __slots__ = ("request_id", "choices", "usage", "served_by", "timings")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    choices: _containers.RepeatedCompositeFieldContainer[_generation_pb2.Choice]
    usage: _generation_pb2.Usage
    served_by: _generation_pb2.ServedBy
    timings: _generation_pb2.Timings
    def __init__(self, request_id: _Optional[str] = ..., choices: _Optional[_Iterable[_Union[_generation_pb2.Choice, _Mapping]]] = ..., usage: _Optional[_Union[_generation_pb2.Usage, _Mapping]] = ..., served_by: _Optional[_Union[_generation_pb2.ServedBy, _Mapping]] = ..., timings: _Optional[_Union[_generation_pb2.Timings, _Mapping]] = ...) -> None: ...

class StreamChatRequest(_message.Message):
    __slots__ = ("model", "messages", "sampling", "options")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    messages: _containers.RepeatedCompositeFieldContainer[_generation_pb2.ChatMessage]
    sampling: _generation_pb2.SamplingParams
    options: _generation_pb2.RequestOptions
    def __init__(self, model: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_generation_pb2.ChatMessage, _Mapping]]] = ..., sampling: _Optional[_Union[_generation_pb2.SamplingParams, _Mapping]] = ..., options: _Optional[_Union[_generation_pb2.RequestOptions, _Mapping]] = ...) -> None: ...

class StreamChatResponse(_message.Message):
    __slots__ = ("request_id", "deltas", "usage", "served_by", "timings")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DELTAS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    deltas: _containers.RepeatedCompositeFieldContainer[_generation_pb2.ChoiceDelta]
    usage: _generation_pb2.Usage
    served_by: _generation_pb2.ServedBy
    timings: _generation_pb2.Timings
    def __init__(self, request_id: _Optional[str] = ..., deltas: _Optional[_Iterable[_Union[_generation_pb2.ChoiceDelta, _Mapping]]] = ..., usage: _Optional[_Union[_generation_pb2.Usage, _Mapping]] = ..., served_by: _Optional[_Union[_generation_pb2.ServedBy, _Mapping]] = ..., timings: _Optional[_Union[_generation_pb2.Timings, _Mapping]] = ...) -> None: ...

class InfillInput(_message.Message):
    __slots__ = ("prefix", "suffix", "order")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    SUFFIX_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    suffix: str
    order: _generation_pb2.InfillOrder
    def __init__(self, prefix: _Optional[str] = ..., suffix: _Optional[str] = ..., order: _Optional[_Union[_generation_pb2.InfillOrder, str]] = ...) -> None: ...

class ChatInput(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[_generation_pb2.ChatMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[_generation_pb2.ChatMessage, _Mapping]]] = ...) -> None: ...

class PreviewPromptRequest(_message.Message):
    __slots__ = ("model", "prompt", "infill", "chat", "max_tokens", "options")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    INFILL_FIELD_NUMBER: _ClassVar[int]
    CHAT_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: str
    infill: InfillInput
    chat: ChatInput
    max_tokens: int
    options: _generation_pb2.RequestOptions
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[str] = ..., infill: _Optional[_Union[InfillInput, _Mapping]] = ..., chat: _Optional[_Union[ChatInput, _Mapping]] = ..., max_tokens: _Optional[int] = ..., options: _Optional[_Union[_generation_pb2.RequestOptions, _Mapping]] = ...) -> None: ...

class PreviewPromptResponse(_message.Message):
    __slots__ = ("model_version", "prompt_format", "token_ids", "pieces", "stop_token_ids", "stop_pieces", "context_limit")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    PIECES_FIELD_NUMBER: _ClassVar[int]
    STOP_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    STOP_PIECES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    prompt_format: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    pieces: _containers.RepeatedScalarFieldContainer[str]
    stop_token_ids: _containers.RepeatedScalarFieldContainer[int]
    stop_pieces: _containers.RepeatedScalarFieldContainer[str]
    context_limit: int
    def __init__(self, model_version: _Optional[str] = ..., prompt_format: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., pieces: _Optional[_Iterable[str]] = ..., stop_token_ids: _Optional[_Iterable[int]] = ..., stop_pieces: _Optional[_Iterable[str]] = ..., context_limit: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "model_version", "pool", "modes", "context_limit", "chat_format")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    MODES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    CHAT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    name: str
    model_version: str
    pool: str
    modes: _containers.RepeatedScalarFieldContainer[str]
    context_limit: int
    chat_format: str
    def __init__(self, name: _Optional[str] = ..., model_version: _Optional[str] = ..., pool: _Optional[str] = ..., modes: _Optional[_Iterable[str]] = ..., context_limit: _Optional[int] = ..., chat_format: _Optional[str] = ...) -> None: ...
