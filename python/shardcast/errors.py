"""The exceptions shardcast raises, besides ValueError (a bad argument), TimeoutError and OSError (a system call).

Every message is the C++ core's, unchanged: it names the file, tensor, byte offset or rank concerned.
"""

from __future__ import annotations

from typing import List


class CheckpointError(ValueError):
    """A checkpoint file or index breaks its format (the message names the file, tensor and byte offset)."""


class PeerError(RuntimeError):
    """Another rank of the job failed or vanished; ``ranks`` lists them (world ranks)."""

    ranks: List[int] = []


class PeerTimeoutError(PeerError, TimeoutError):
    """A wait between ranks ran out: ``ranks`` never arrived (dead, hung, or not started)."""


class DeviceError(RuntimeError):
    """A CUDA or NCCL call failed (the message names the call, the error and the rank)."""
