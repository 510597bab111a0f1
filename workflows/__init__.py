"""The MemberOps Temporal worker: journeys and every long-running or periodic process."""
