"""The durable job queue and its workers."""

from salus.jobs.queue import Job, JobQueue, JobStatus
from salus.jobs.worker import JobContext, JobRegistry, Worker

__all__ = ["Job", "JobContext", "JobQueue", "JobRegistry", "JobStatus", "Worker"]
