"""What every fleet gRPC server shares: the error mapping and the bootstrap (health, reflection,
port file, graceful stop)."""
