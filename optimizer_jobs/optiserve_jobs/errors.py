"""Errors the job reports as its failure reason (each names the problem and where it is)."""


class JobError(Exception):
    """A failure that ends the job with a clear reason and a non-zero exit."""


class SourceError(JobError):
    """The model or a data set cannot be fetched or read."""


class PassError(JobError):
    """A pass could not complete."""
