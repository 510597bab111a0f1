"""What every MemberOps process runs on, the three services and the Temporal worker alike:
configuration, logs, the database and its migrations, auth, the gRPC server and its error mapping,
the feed contract, and the field checks and page tokens every API shares."""
