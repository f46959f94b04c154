"""The recruiter's review page (`ranker web`): server-rendered HTML over the gRPC service."""
