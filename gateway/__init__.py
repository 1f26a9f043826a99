"""The gRPC gateway: authenticate, validate, resolve, enqueue, stream back."""
